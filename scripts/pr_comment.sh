#!/usr/bin/env bash
# Post the report of scripts/pr_report.py on its pull request as one comment, updated in place
# on each push (found by its marker, among the comments of the token's own user). Runs in
# .github/workflows/pr-comment.yml (workflow_run): env GH_TOKEN, REPO (owner/name), HEAD_SHA
# (the commit the report's run tested). Needs only bash and gh.
#
# The report folder is an artifact of the pull request's own run, which a fork can write: its
# pr-number must be a number and name the pull request whose head is HEAD_SHA; the report is
# posted as text, never run. Where the token cannot comment (or the API fails), the report
# goes to the job summary instead and the job stays green.
#
# Usage: scripts/pr_comment.sh REPORT_DIR
set -euo pipefail

dir=${1:?usage: scripts/pr_comment.sh REPORT_DIR}
: "${REPO:?REPO (owner/name) is not set}" "${HEAD_SHA:?HEAD_SHA is not set}"
marker='<!-- gradattn-pr-report -->'
report=$dir/report.md
limit=60000  # a comment holds at most 65,536 characters

to_summary() {  # $1: why the report is not on the pull request
  echo "::warning::$1: the report is in this job's summary"
  cat "$report" >> "${GITHUB_STEP_SUMMARY:-/dev/stdout}"
  exit 0
}

[[ -f $report ]] || { echo "::error::$report: no report in the artifact"; exit 1; }
grep -qF -- "$marker" "$report" || { echo "::error::$report lacks the report's marker"; exit 1; }
number=$(tr -d '[:space:]' < "$dir/pr-number" 2>/dev/null || true)
[[ $number =~ ^[0-9]{1,9}$ ]] || { echo "::error::$dir/pr-number: not a pull-request number"; exit 1; }

head=$(gh api "repos/$REPO/pulls/$number" --jq .head.sha) || to_summary "pull request #$number not readable"
if [[ $head != "$HEAD_SHA" ]]; then
  echo "pull request #$number is at ${head:0:10}, not ${HEAD_SHA:0:10} (a newer push): its own run posts"
  exit 0
fi

body=$(mktemp)
trap 'rm -f "$body"' EXIT
if (( $(wc -c < "$report") > limit )); then
  { head -c "$limit" "$report"; printf '\n\n… cut at %s characters: the whole report is in the artifact pr-report.\n' "$limit"; } > "$body"
else
  cp "$report" "$body"
fi

# The Actions token comments as github-actions[bot]; another token: set COMMENT_USER.
me=${COMMENT_USER:-github-actions[bot]}
[[ $me =~ ^[A-Za-z0-9-]+(\[bot\])?$ ]] || { echo "::error::COMMENT_USER=$me: not a login"; exit 1; }
filter=".[] | select(.user.login == \"$me\" and (.body | contains(\"$marker\"))) | .id"
id=$(gh api --paginate "repos/$REPO/issues/$number/comments" --jq "$filter" | head -n 1) \
  || to_summary "the comments of #$number not readable"
if [[ -n $id ]]; then
  gh api --method PATCH "repos/$REPO/issues/comments/$id" -F "body=@$body" > /dev/null \
    || to_summary "comment $id on #$number not updated (the token cannot comment?)"
  echo "updated comment $id on #$number"
else
  gh api --method POST "repos/$REPO/issues/$number/comments" -F "body=@$body" > /dev/null \
    || to_summary "no comment posted on #$number (the token cannot comment?)"
  echo "posted the report on #$number"
fi

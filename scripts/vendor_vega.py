"""Write .dvc/html/index.html, the page template of `dvc plots show|diff` (.dvc/config's
plots.html_template), with vega, vega-lite and vega-embed inlined from the npm registry.

Usage: python scripts/vendor_vega.py        (needs `npm` and the registry; run from the repo root)

DVC's own page loads those three from a CDN, so its data plots stay blank offline. This one
carries them: the minified browser build of each pinned package, byte for byte as npm ships
it (its sha256 in the comment above it), and each licence beside the template (all three
BSD-3-Clause). The majors are the ones DVC's templates are written for (Vega-Lite v5 schema).
Re-running it with the same pins rewrites the same bytes.
"""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
import tempfile
from pathlib import Path

from gradattn.core.errors import GradattnError, first_line
from gradattn.core.stage import entry

# package → (version, its minified browser build in the npm tarball)
PINS = {
    "vega": ("5.33.1", "build/vega.min.js"),
    "vega-lite": ("5.23.0", "build/vega-lite.min.js"),
    "vega-embed": ("6.29.0", "build/vega-embed.min.js"),
}
# vega's tarball ships no LICENSE; its package.json says BSD-3-Clause, and its monorepo's
# LICENSE ships in its sub-packages: vega-view's, of the release vega 5.33.1 depends on.
LICENSE_FROM = {"vega": "vega-view@5.16.1"}

OUT = Path(".dvc/html")
# DVC fills these three by str.replace over the whole template: the scripts must not hold them
# (nor anything that ends or confuses an inline <script>).
FORBIDDEN = ("{scripts}", "{plot_divs}", "{refresh_tag}", "</script", "<!--")

HEAD = """<!DOCTYPE html>
<!-- The page of `dvc plots show|diff` (.dvc/config: plots.html_template), written by
     scripts/vendor_vega.py: vega, vega-lite and vega-embed inlined from npm, so every plot
     renders from file:// with no network. It has no placeholder for DVC's scripts (three
     tags loading them from a CDN). Licences: .dvc/html/LICENSE.* (BSD-3-Clause). -->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <style>
        table {{ border-spacing: 15px; }}
        img {{ max-width: 100%; }}
    </style>
{scripts}
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def npm_pack(spec: str, into: Path) -> tarfile.TarFile:
    try:
        done = subprocess.run(["npm", "pack", spec, "--silent"], cwd=into, capture_output=True,
                              text=True)
    except FileNotFoundError:
        raise GradattnError("npm not found: install Node.js's npm (apt-get install npm) and "
                            "rerun") from None
    if done.returncode != 0:
        raise GradattnError(f"npm pack {spec} failed: {first_line(Exception(done.stderr))} "
                            "(is the npm registry reachable?)")
    return tarfile.open(into / done.stdout.strip().splitlines()[-1])


def member(tar: tarfile.TarFile, path: str) -> bytes:
    return tar.extractfile(f"package/{path}").read()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, (version, build) in PINS.items():
            with npm_pack(f"{package}@{version}", Path(tmp)) as tar:
                code = member(tar, build).decode("utf-8")
                licence = (member(tar, "LICENSE") if package not in LICENSE_FROM else None)
            if licence is None:
                with npm_pack(LICENSE_FROM[package], Path(tmp)) as tar:
                    licence = member(tar, "LICENSE")
            bad = [s for s in FORBIDDEN if s.lower() in code.lower()]
            if bad:
                raise GradattnError(f"{package}@{version} {build} contains {bad}: cannot inline "
                                    "it in a <script> (pin another version in PINS)")
            (OUT / f"LICENSE.{package}").write_bytes(licence)
            digest = hashlib.sha256(code.encode("utf-8")).hexdigest()
            scripts.append(f"    <!-- {package}@{version} {build} (BSD-3-Clause, "
                           f"LICENSE.{package}) sha256 {digest} -->\n"
                           f"    <script>{code}</script>")
    template = HEAD.format(scripts="\n".join(scripts))
    (OUT / "index.html").write_text(template, encoding="utf-8")
    print(f"{OUT / 'index.html'}: {len(template.encode()):,} bytes; "
          + ", ".join(f"{p}@{v}" for p, (v, _) in PINS.items()))
    return 0


if __name__ == "__main__":
    entry(main)

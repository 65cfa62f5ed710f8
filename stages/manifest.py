"""The source files behind data.sources.<dataset> (machine.yaml) or data.custom.<dataset>, as
DVC should see them: data/manifests/<dataset>.json lists each file's relative path, size and
md5, not the folder's path, so the same files in another folder (or on another machine) are
the same source. A manifest only: the gradattn.sources package (run by download) reads them.

The files lie outside the project, where DVC cannot look, so this stage always runs
(`always_changed` in dvc.yaml) and rewrites the list; the list changes only when the files
do, and only then does `download@<dataset>` (which depends on it) copy them again. md5s are
reused while a file's size and mtime are unchanged (a small cache in .dvc/tmp), so an
unchanged source costs a walk of its folder. Sources fetched from the internet or bundled
with the package have no files here: their download verifies them by checksum.
"""

import json
import os
from pathlib import Path

from gradattn.core import paths
from gradattn.core.io import file_digest, read_json, walk_once, write_json
from gradattn.core.settings import check_choice, machine_sources
from gradattn.core.stage import stage_args, stage_entry


def source_path(cfg: dict, sources: dict[str, str]) -> tuple[str, Path] | None:
    """(the setting naming it, the folder or file) of a local source, else None."""
    if cfg.get("custom"):
        return f"data.custom.{cfg['dataset']}.path", paths.user_path(cfg["custom"]["path"])
    source = sources.get(cfg["dataset"])
    if source:
        return f"data.sources.{cfg['dataset']}", paths.user_path(source)
    return None


def main() -> None:
    (dataset,) = stage_args("dataset")
    out = paths.source_manifest(dataset)
    # machine.yaml is no stage's dependency: this stage always runs, so it reads it here.
    sources = machine_sources()
    from gradattn.sources.registry import known_datasets

    for name in sources:  # a misspelt name would silently mean "download it"
        check_choice(f"data.sources.{name}", name, tuple(known_datasets()))
    local = source_path(read_json(paths.source_config(dataset)), sources)
    if local is None:
        write_json(out, {"dataset": dataset, "files": {}})
        print(f"manifest {dataset}: downloaded or bundled (verified by checksum at download)")
        return
    key, path = local
    if not path.exists() and out.exists():
        # A clone on another machine: the raw data came from DVC, the files are not here.
        print(f"manifest {dataset}: {path} ({key}) is not on this machine: keeping the list of "
              f"its files in {out} (data/raw as last downloaded)")
        return
    cache_file = paths.parent_root() / ".dvc" / "tmp" / "gradattn-manifest" / f"{dataset}.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    files, fresh = {}, {}
    for file in (walk_once(path, where=key) if path.is_dir() else [path] if path.exists()
                 else []):
        if not file.is_file():
            continue
        st = file.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        real = os.path.realpath(file)
        known = cache.get(real)
        md5 = known[1] if known and known[0] == stamp else file_digest(file)
        fresh[real] = [stamp, md5]
        files[file.relative_to(path).as_posix() if path.is_dir() else file.name] = {
            "size": st.st_size, "md5": md5}
    write_json(out, {"dataset": dataset, "files": files})
    if paths.parent_root().joinpath(".dvc").is_dir():
        write_json(cache_file, fresh)
    size = sum(f["size"] for f in files.values())
    print(f"manifest {dataset}: {len(files):,} files, {size / 1e6:.1f} MB in {path} ({key})")


if __name__ == "__main__":
    stage_entry(main)

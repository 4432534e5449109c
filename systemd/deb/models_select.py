#!/usr/bin/env python3
"""Which model files go into which Debian package (used by systemd/deb/build and check).

  edgefuse-models        the models the compiled-in configuration uses (configs/default.toml's
                         [encoders.*] model keys, plus the microphone's voice-activity gate), with
                         manifest.toml and their preprocessing files: what a device needs.
  edgefuse-models-extra  every other manifest entry (fp32 originals, other compressed variants).

Usage: models_select.py default|extra MODELS_DIR CONFIG   -> one relative path per line
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

# The microphone gate's model key (config.rs: sources.mic.vad_model); not in default.toml
# because the microphone is off by default.
ALWAYS = ("vad",)


def resolved(models: dict) -> dict:
    """Manifest entries with `variant_of` inherit every key of their base (as models/optimize.py)."""

    def one(key, seen=()):
        spec = models[key]
        base = spec.get("variant_of")
        if not base or base in seen or base not in models:
            return dict(spec)
        merged = one(base, seen + (key,))
        merged.update(spec)
        return merged

    return {k: one(k) for k in models}


def default_keys(config: dict, models: dict) -> set[str]:
    keys = {e["model"] for e in config.get("encoders", {}).values() if isinstance(e, dict) and "model" in e}
    keys |= {k for k in ALWAYS if k in models}
    unknown = keys - models.keys()
    if unknown:
        sys.exit(f"configs name models the manifest lacks: {sorted(unknown)}")
    return keys


def files_of(spec: dict, here: Path) -> set[str]:
    files = {spec["file"]}
    for key in ("files",):  # extra files some models carry (a list of paths)
        files |= set(spec.get(key, []))
    for v in spec.get("preprocess", {}).values():
        if isinstance(v, str) and (here / v).is_file():
            files.add(v)
    return files


def select(which: str, here: Path, config_path: Path) -> list[str]:
    manifest = tomllib.load(open(here / "manifest.toml", "rb"))
    models = resolved(manifest["models"])
    config = tomllib.load(open(config_path, "rb"))
    defaults = default_keys(config, models)
    chosen: set[str] = set()
    for key, spec in models.items():
        if (key in defaults) != (which == "default"):
            continue
        if not (here / spec["file"]).is_file():
            if spec.get("optional") and which == "extra":
                continue
            sys.exit(f"missing {spec['file']} (run models/fetch)")
        chosen |= files_of(spec, here)
    if which == "default":
        chosen.add("manifest.toml")
    else:
        # A file both packages would carry (a shared tokenizer) stays in the base package only.
        chosen -= set(select("default", here, config_path))
    return sorted(chosen)


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in ("default", "extra"):
        sys.exit(__doc__)
    for f in select(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])):
        print(f)


if __name__ == "__main__":
    main()

"""Parameter profiles: ``conf/config.yaml`` composed with one overlay of ``conf/profile/``.

The user edits ``conf/config.yaml`` (the defaults: the CPU profile for real data) and, for one
profile only, ``conf/profile/<name>.yaml``, which lists just the keys that profile changes. DVC's
Hydra composition (``hydra.enabled`` in ``.dvc/config``) composes the two on every ``dvc exp
run`` and writes ``params.yaml``, the file the stages read and DVC tracks; ``-S profile=<name>``
picks the overlay and ``-S key=value`` changes one value on top. Nothing ever writes to
``conf/``.

This module composes the same way (the same Hydra calls DVC makes) where DVC does not run the
pipeline: a GPU node that runs ``dvc.yaml``'s commands without DVC, the seed table that asks
which experiments used a profile's recipe, and the tests that check every profile's params.

    python -m pipeline.profiles gpu --set base.image_size=224 --out params.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ParamsError, run_cli
from pipeline.io import write_text_atomic

#: Where the composed parameters come from (DVC's defaults for Hydra: ``conf/config.yaml``).
CONF_DIR = Path("conf")
CONFIG_NAME = "config"
#: The config group of the profiles, and the key every profile sets to its own name.
GROUP = "profile"


def names(conf_dir: Path = CONF_DIR) -> list[str]:
    """The profiles there are (``cpu``, ``demo``, ``gpu``, ``quick``)."""
    return sorted(path.stem for path in (conf_dir / GROUP).glob("*.yaml"))


def compose(profile: str | None = None, overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The parameters ``dvc exp run -S profile=<profile> -S <override>...`` writes to params.yaml
    (``profile`` None: the default of ``conf/config.yaml``'s defaults list)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if profile is not None and profile not in names(conf_dir):
        raise ParamsError(f"profile '{profile}' not found (conf/{GROUP}/: {', '.join(names(conf_dir))})")
    everything = ([f"{GROUP}={profile}"] if profile is not None else []) + list(overrides)
    try:
        with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
            config = hydra_compose(config_name=CONFIG_NAME, overrides=everything)
        return OmegaConf.to_container(config, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ParamsError(f"{conf_dir}: cannot compose profile {profile or '(default)'}: {first}") from None


def dump(params: dict[str, Any]) -> str:
    """``params`` as YAML, in the key order composition gives (as params.yaml is written)."""
    return yaml.safe_dump(params, sort_keys=False, default_flow_style=False)


def write(profile: str, path: Path, overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> Path:
    """Write ``profile`` composed (as ``dvc exp run -S profile=...`` would) to ``path``, atomically."""
    write_text_atomic(path, dump(compose(profile, overrides, conf_dir)))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compose conf/config.yaml with a profile into a params file.")
    parser.add_argument("profile", help=f"a profile of conf/{GROUP}/")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a value on top (Hydra override)"
    )
    parser.add_argument("--out", help="write here (atomically) instead of standard output")
    args = parser.parse_args(argv)
    if args.out:
        write(args.profile, Path(args.out), args.set)
        print(
            f"{args.out} <- conf/config.yaml + conf/{GROUP}/{args.profile}.yaml"
            + "".join(f" + {item}" for item in args.set)
        )
    else:
        sys.stdout.write(dump(compose(args.profile, args.set)))


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""Fetch the cached results of each model from the DVC remote, saying what to do when it fails.

    python -m analysis.pull                      # every model in params.yaml (make pull)
    python -m analysis.pull --model gpt2-small   # one model

Without --model, the models whose results dvc.lock records are pulled; a model never
computed (gpt2-small, without the hub) is named and skipped. The default remote is made to
verify what it hands over (`verify = true`), so an object altered on the remote is refused. For each model this runs
`dvc pull --with-deps paper@<model>`, after checking what plain `dvc pull` would only
report as "Everything is up to date." or "Is your cache up to date?": that a default
remote is configured, that a local remote exists on this machine, and that the model's
results were ever recorded in dvc.lock. Exit status 0 if every requested model (without
--model, every recorded one) was pulled, 5 if the remote is unusable, 6 if some results
are missing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

from analysis.params import exit_on_params_error, load_params

REMOTE_HELP = ("Point it at the project's storage, e.g. `dvc remote add -d --local storage s3://bucket/path` "
               "(README.md, 'DVC remotes').")


class PullError(RuntimeError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], capture_output=True, text=True)


def default_remote() -> tuple[str, str]:
    """(name, url) of the default remote, or PullError(5) saying how to set one."""
    answer = _dvc("remote", "default")  # with none set, it prints "No default remote set" and fails
    name = answer.stdout.strip()
    if answer.returncode != 0 or not name:
        raise PullError(f"no default DVC remote is configured. {REMOTE_HELP}", 5)
    for line in _dvc("remote", "list").stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return name, parts[1]
    raise PullError(f"the default DVC remote {name!r} has no url. {REMOTE_HELP}", 5)


def ensure_verify(name: str) -> None:
    """Pulled objects are checked against their hashes only where the remote sets `verify`
    (DVC's default is off for most remotes: an HTTP remote would hand over whatever a writer
    of the remote put there). Turn it on for this remote, in .dvc/config.local, and say so."""
    if _dvc("config", f"remote.{name}.verify").stdout.strip().lower() == "true":
        return
    _dvc("remote", "modify", "--local", name, "verify", "true")
    print(f"remote {name!r}: set verify = true (.dvc/config.local), so that every pulled object is checked "
          "against its hash", file=sys.stderr)


def check_local_remote(name: str, url: str) -> None:
    if urlparse(url).scheme not in ("", "file"):
        return  # s3, gs, ssh, ...: DVC reports its own connection errors
    path = Path(os.path.expanduser(urlparse(url).path if url.startswith("file:") else url))
    if not path.is_absolute():
        path = Path(".dvc") / path  # DVC resolves relative local remotes against .dvc/
    if not path.is_dir():
        raise PullError(
            f"the DVC remote {name!r} is the local folder {path}, which does not exist on this machine. "
            f"On the machine that ran the pipeline, `dvc push` fills it; to pull from elsewhere, point the "
            f"remote there. {REMOTE_HELP}", 5)


def recorded_models(lock_file: Path = Path("dvc.lock")) -> set[str]:
    if not lock_file.exists():
        return set()
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    return {name.split("@", 1)[1] for name in stages if name.startswith("paper@")}


def missing_targets(output: str) -> list[str]:
    """The paths DVC lists after 'Checkout failed for following targets:' (in no fixed order)."""
    lines = output.splitlines()
    if not any("Checkout failed for following targets" in line for line in lines):
        return []
    start = next(i for i, line in enumerate(lines) if "Checkout failed for following targets" in line) + 1
    return [line.strip() for line in lines[start:] if line.strip() and not line.startswith(("Is your", "<http"))]


def pull_model(model: str, remote: tuple[str, str], recorded: set[str]) -> None:
    if model not in recorded:
        how = "`make gpt2`" if model == "gpt2-small" else f"`dvc repro paper@{model}`"
        raise PullError(
            f"{model}: dvc.lock records no results for this model, so there is nothing to pull. Compute them "
            f"with {how} (on a machine that can load the model), commit dvc.lock and `dvc push`.", 6)
    result = _dvc("pull", "--with-deps", f"paper@{model}")
    if result.returncode == 0:
        return
    missing = sorted(set(missing_targets(result.stdout + result.stderr)))
    if missing:
        shown = "\n  ".join(missing)
        raise PullError(
            f"{model}: {len(missing)} output(s) are in dvc.lock but missing from the remote {remote[0]!r} ({remote[1]}), "
            f"or altered there (their hash does not match dvc.lock's, and `verify` refused them):\n  "
            f"{shown}\nThe machine that computed them must run `dvc push`; or rebuild them here with "
            f"`dvc repro paper@{model}`.", 6)
    raise PullError(f"{model}: dvc pull failed:\n{result.stderr.strip() or result.stdout.strip()}", 6)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.pull", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="one model key from params.yaml (default: all)")
    args = parser.parse_args(argv)
    with exit_on_params_error():
        params = load_params()
        models = [params.model(args.model) and args.model] if args.model else list(params.models)
    try:
        remote = default_remote()
        check_local_remote(*remote)
        ensure_verify(remote[0])
    except PullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.status) from None
    recorded, failures = recorded_models(), []
    if not args.model:  # every model: pull what dvc.lock records, and say what it does not
        for model in (m for m in models if m not in recorded):
            print(f"{model}: not pulled, dvc.lock records no results for it (none were computed and committed)",
                  file=sys.stderr)
        models = [m for m in models if m in recorded]
        if not models:
            print("error: dvc.lock records no results for any model; run `make` (or `dvc repro`) first", file=sys.stderr)
            raise SystemExit(6)
    for model in models:
        try:
            pull_model(model, remote, recorded)
            print(f"{model}: pulled")
        except PullError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures.append(exc.status)
    if failures:
        raise SystemExit(max(failures))


if __name__ == "__main__":
    main()

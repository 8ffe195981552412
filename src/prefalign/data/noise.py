"""Hand-crafted noise data (PoFT paper §4.3).

"We create a pair of inputs with a randomly matched output and simulate data corruption through
the processes of character insertion, deletion, and modification ... The newly created noise data
is blended with the original data for training." Each noise sample takes one conversation's
prompt (everything before its final assistant turn) and another conversation's final response,
corrupted character by character. Samples are labelled (``noise=True``) for bi-PoFT and analysis.
Everything is seeded and deterministic.

The matched response can be put into another answer format before it is corrupted
(``strip_prefix`` / ``add_prefix`` / ``add_suffix``), so that noise need not share the clean
responses' format tokens (experiments/poft_mechanisms: bi-PoFT without a shared template).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

import datasets

from prefalign.core.errors import DataError
from prefalign.core.names import NOISE

DEFAULT_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " "


@dataclass
class NoiseConfig:
    """How many noise samples to make, and how to corrupt their responses.

    Attributes:
        num_samples: noise samples to create.
        seed: seed of the prompt/response matching and of the corruption.
        insert_rate / delete_rate / modify_rate: per-character probabilities of inserting a random
            character after it, deleting it, and replacing it by a different character.
        alphabet: characters used for insertions and modifications.
        strip_prefix: removed from the start of the matched response, where the response starts
            with it (e.g. a dataset's fixed answer prefix such as ``"Answer: "``); ``""``: nothing.
        add_prefix / add_suffix: put before / after the (stripped) response, so that the noise
            takes an answer format of its own; both are corrupted with the rest of the response.
            Defaults (``""``) keep the paper's noise: the other conversation's response as it is.
    """

    num_samples: int
    seed: int = 0
    insert_rate: float = 0.05
    delete_rate: float = 0.05
    modify_rate: float = 0.05
    alphabet: str = DEFAULT_ALPHABET
    strip_prefix: str = ""
    add_prefix: str = ""
    add_suffix: str = ""

    def __post_init__(self) -> None:
        if self.num_samples < 0:
            raise ValueError(f"noise.num_samples must be >= 0, got {self.num_samples}")
        for name in ("insert_rate", "delete_rate", "modify_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"noise.{name} must be in [0, 1], got {rate}")
        if self.delete_rate + self.modify_rate > 1.0:
            raise ValueError("noise.delete_rate + noise.modify_rate must be at most 1")
        if len(set(self.alphabet)) < 2:
            raise ValueError("noise.alphabet needs at least two distinct characters")
        for name in ("strip_prefix", "add_prefix", "add_suffix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"noise.{name} must be a string, got {getattr(self, name)!r}")

    def reformat(self, response: str) -> str:
        """``response`` in the noise's answer format: ``strip_prefix`` removed where present, then
        ``add_prefix`` + response + ``add_suffix`` (unchanged with the defaults)."""
        if self.strip_prefix and response.startswith(self.strip_prefix):
            response = response[len(self.strip_prefix) :]
        return f"{self.add_prefix}{response}{self.add_suffix}"


def corrupt_text(
    text: str,
    rng: random.Random,
    insert_rate: float,
    delete_rate: float,
    modify_rate: float,
    alphabet: str = DEFAULT_ALPHABET,
) -> str:
    """Delete, modify, or follow with an inserted character each character of ``text`` at the given rates.

    A non-empty input never becomes empty (one original character is kept if all were deleted).
    """
    out = []
    for char in text:
        draw = rng.random()
        if draw < delete_rate:
            pass
        elif draw < delete_rate + modify_rate:
            replacement = rng.choice(alphabet)
            while replacement == char:
                replacement = rng.choice(alphabet)
            out.append(replacement)
        else:
            out.append(char)
        if rng.random() < insert_rate:
            out.append(rng.choice(alphabet))
    if text and not out:
        out.append(rng.choice(text))
    return "".join(out)


def make_noise_samples(ds: datasets.Dataset, config: NoiseConfig) -> datasets.Dataset:
    """Create ``config.num_samples`` noise samples from the conversations of ``ds``.

    Each takes a random conversation's prompt and another's final response, put into the noise's
    answer format (:meth:`NoiseConfig.reformat`) and corrupted (:func:`corrupt_text`).

    Columns: ``id`` (``noise-<seed>-<i>``), ``messages``, ``noise`` (True), and the ids of the
    conversations the prompt and the response came from.
    """
    missing = [c for c in ("id", "messages") if c not in ds.column_names]
    if missing:
        raise DataError(f"noise: the dataset lacks column(s) {missing}")
    if len(ds) < 2:
        raise DataError(
            f"noise: need at least 2 conversations to re-match prompts and responses, got {len(ds)}"
        )
    rng = random.Random(config.seed)
    ids, conversations = ds["id"], ds["messages"]
    rows = []
    for i in range(config.num_samples):
        prompt_row = rng.randrange(len(ds))
        response_row = rng.randrange(len(ds) - 1)
        response_row += response_row >= prompt_row  # a different conversation
        prompt = conversations[prompt_row]
        last_assistant = max(j for j, m in enumerate(prompt) if m["role"] == "assistant")
        response = config.reformat(conversations[response_row][-1]["content"])
        corrupted = corrupt_text(
            response, rng, config.insert_rate, config.delete_rate, config.modify_rate, config.alphabet
        )
        rows.append(
            {
                "id": f"noise-{config.seed}-{i}",
                "messages": [*prompt[:last_assistant], {"role": "assistant", "content": corrupted}],
                NOISE: True,
                "noise_source_prompt_id": ids[prompt_row],
                "noise_source_response_id": ids[response_row],
            }
        )
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            NOISE: datasets.Value("bool"),
            "noise_source_prompt_id": datasets.Value("string"),
            "noise_source_response_id": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


def mix_with_noise(clean: datasets.Dataset, noise: datasets.Dataset, seed: int) -> datasets.Dataset:
    """Label ``clean`` rows ``noise=False``, add the noise rows, and shuffle with ``seed``.

    Extra columns of the clean data are kept, empty (None) on noise rows.
    """
    clean = clean.add_column(NOISE, [False] * len(clean))
    for column in ("noise_source_prompt_id", "noise_source_response_id"):
        clean = clean.add_column(column, [""] * len(clean))
    only_noise = sorted(set(noise.column_names) - set(clean.column_names))
    if only_noise:
        raise DataError(f"noise: the clean data lacks column(s) {only_noise} of the noise data")
    for column in sorted(set(clean.column_names) - set(noise.column_names)):  # e.g. a dataset's own labels
        noise = noise.add_column(column, [None] * len(noise), feature=clean.features[column])
    clean = clean.cast(noise.features)
    clash = set(clean["id"]) & set(noise["id"])
    if clash:
        raise DataError(
            f"noise: sample id {sorted(clash)[0]} is used by clean and noise data; ids must be unique"
        )
    return datasets.concatenate_datasets([clean, noise]).shuffle(seed=seed).flatten_indices()


def build_noisy_dataset(clean: datasets.Dataset, config: NoiseConfig) -> datasets.Dataset:
    """``clean`` mixed with ``config.num_samples`` hand-crafted noise samples made from it."""
    return mix_with_noise(clean, make_noise_samples(clean, config), config.seed)

"""Every seed derivation of the project, in one place (torch-free: the control plane imports it).

A job's outputs are pure functions of the seeds below, so changing any formula changes the bytes of
every shard, checkpoint and evaluation made with it: the formulas are frozen.

- Generate jobs: shard ``i`` of a job with seed ``s`` draws its noise in chunks of ``GENERATE_CHUNK``
  images; chunk ``c`` is seeded with ``chunk_seed(shard_seed(s, i), c)``.
- Sampling with ``min_confidence``: round 0 uses the call's seed, round ``r`` uses ``round_seed(seed, r)``.
- GAN training: every stream of the trainer is ``mix_seed(train seed, stream[, epoch])``
  (see :data:`TRAIN_STREAMS`); an export's standing statistics use ``mix_seed(train seed,
  TRAIN_STREAMS["standing_stats"], step)``.
- Classifier training: batch order and augmentation streams are ``stream_seed(seed, *keys)``.
- Downstream evaluation: ``mix_seed(job seed, DOWNSTREAM_STREAMS[...])``.
"""
from __future__ import annotations

import hashlib

#: Images per ``generate()`` call of a generate shard: part of what makes a shard's bytes reproducible.
GENERATE_CHUNK = 500

#: The evaluate job's downstream streams (``mix_seed(job seed, stream)``): the generated training images
#: and the seeded real subset of the augmentation baseline.
DOWNSTREAM_STREAMS = {"generated": 1, "real_subset": 2}

#: The GAN trainer's random streams, as the second argument of :func:`mix_seed`.
TRAIN_STREAMS = {"trainer": 1, "torch_cpu": 2, "epoch_order": 3, "torch_cuda": 4, "trainer_cuda": 5, "standing_stats": 6}


def _sha_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def shard_seed(job_seed: int, index: int) -> int:
    """The noise seed of one generate shard: a pure function of the job seed and the shard index."""
    return _sha_seed(f"cganctl-shard:{job_seed}:{index}")


def chunk_seed(shard: int, chunk: int) -> int:
    """The noise seed of chunk ``chunk`` (``GENERATE_CHUNK`` images) of a shard seeded ``shard``."""
    return _sha_seed(f"{shard}:{chunk}")


def _seed_sequence(values: list[int]) -> tuple[int, int]:
    import numpy as np

    state = np.random.SeedSequence(values).generate_state(2, np.uint32)
    return int(state[0]), int(state[1])


def mix_seed(*values: int) -> int:
    """A well-mixed seed below 2**63 derived from integers (valid for ``torch.Generator.manual_seed``)."""
    a, b = _seed_sequence([v % 2**64 for v in values])
    return a << 31 | b >> 1


def round_seed(seed: int, round_index: int) -> int:
    """Seed of the noise for filtering round ``round_index`` (round 0 uses ``seed`` itself)."""
    if round_index == 0:
        return seed
    a, b = _seed_sequence([seed % 2**64, round_index])
    return a << 31 | b >> 1


def stream_seed(seed: int, *keys: int) -> int:
    """The classifier trainer's stream seeds (a 64-bit value from ``SeedSequence([seed, *keys])``)."""
    a, b = _seed_sequence([seed, *keys])
    return a << 32 | b


def describe_generate_seeding() -> str:
    """How a generate job's noise is seeded, as the manifest states it."""
    return (
        "shard seed = sha256('cganctl-shard:<seed>:<shard>')[:8] >> 1; "
        f"noise of chunk c ({GENERATE_CHUNK} images) seeded with sha256('<shard seed>:<c>')[:8] >> 1"
    )

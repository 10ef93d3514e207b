"""What the intervals cost evaluate: bootstrap intervals and paired comparisons of four models."""

from __future__ import annotations

import time

import numpy as np

#: The budget of the issue that introduced them: at most 30 s added to evaluate on 2 cores.
BUDGET_SECONDS = 30.0


def bench_intervals(repeats: int, images: int = 1431, lesions: int = 1000, resamples: int = 1000) -> dict:
    """Seconds for the intervals of four models (three and the ensemble) and their six paired
    comparisons on a test split the size of HAM10000's (1,431 images of about 1,000 lesions),
    plus the same on an external set of 1,512 images resampled one by one."""
    from pipeline.evaluation.uncertainty import Bootstrap, comparisons

    classes = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    rng = np.random.default_rng(0)

    def one_set(count: int, groups):
        labels = rng.choice(7, count, p=[0.03, 0.05, 0.11, 0.012, 0.11, 0.67, 0.018])
        models = {}
        for name in ("cnn_focal", "effnetb7", "effnet_lite0", "ensemble"):
            logits = rng.normal(size=(count, 7))
            logits[np.arange(count), labels] += 2.0
            models[name] = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
        started = time.perf_counter()
        boot = Bootstrap.of(labels, groups, resamples, 0, 0.95, classes.index("mel"))
        for probabilities in models.values():
            boot.intervals(probabilities, classes)
        comparisons(boot, models)
        return time.perf_counter() - started

    lesion_of_image = np.sort(rng.integers(0, lesions, images))
    timings = [one_set(images, lesion_of_image) + one_set(1512, None) for _ in range(max(1, repeats))]
    seconds = float(np.median(timings))
    return {
        "models": 4,
        "pairs": 6,
        "resamples": resamples,
        "test_images": images,
        "external_images": 1512,
        "seconds": round(seconds, 2),
        "budget_seconds": BUDGET_SECONDS,
        "fraction_of_budget": round(seconds / BUDGET_SECONDS, 3),
    }

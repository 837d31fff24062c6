"""A fixed set of result records for golden-file report tests.

Three tables: RN50/openai few-shot (zero-shot, linear probe, CLIP-Adapter on DTD and EuroSAT,
with a failed seed, a missing seed and an oracle-tuned cell in its own table), ViT-B-16/openai
on ImageNet with distribution-shift scores, and RN50/openai base-to-new on DTD.
"""

from pathlib import Path

from bench.fileio import sha256_json
from bench.results import RunResult, result_path, write_result

SHORTEST = {"resize": "shortest", "image_size": 224, "interpolation": "bicubic"}
PROMPTS = {"zero_shot": "coop", "clip_adapter": "coop", "linear_probe": None}

ACCURACY = {  # (method, dataset, shots) -> top-1 per seed 1, 2, 3
    ("zero_shot", "dtd", 1): [0.42, 0.42, 0.42],
    ("zero_shot", "dtd", 16): [0.42, 0.42, 0.42],
    ("zero_shot", "eurosat", 1): [0.375, 0.375, 0.375],
    ("zero_shot", "eurosat", 16): [0.375, 0.375, 0.375],
    ("linear_probe", "dtd", 1): [0.30, 0.33, 0.36],
    ("linear_probe", "dtd", 16): [0.60, 0.62, 0.64],
    ("linear_probe", "eurosat", 1): [0.50, 0.52, 0.54],
    ("linear_probe", "eurosat", 16): [0.80, 0.81, 0.85],
    ("clip_adapter", "dtd", 1): [0.45, 0.47, 0.46],
    ("clip_adapter", "dtd", 16): [None, 0.66, 0.67],  # seed 1 failed
    ("clip_adapter", "eurosat", 1): [0.60, 0.62, 0.61],
    ("clip_adapter", "eurosat", 16): [0.84, 0.85],  # seed 3 missing
}
TRANSFER = {  # ViT-B-16, imagenet, 16 shots: (method, seed) -> (top1, imagenet_v2, imagenet_sketch)
    ("zero_shot", 1): (0.6673, 0.6083, 0.4615),
    ("zero_shot", 2): (0.6673, 0.6083, 0.4615),
    ("clip_adapter", 1): (0.7100, 0.6300, 0.4700),
    ("clip_adapter", 2): (0.7120, 0.6280, 0.4680),
}
BASE2NEW = {  # RN50, dtd, 16 shots: (method, seed) -> (base, new)
    ("zero_shot", 1): (0.53, 0.60),
    ("zero_shot", 2): (0.53, 0.60),
    ("clip_adapter", 1): (0.80, 0.50),
    ("clip_adapter", 2): (0.78, 0.52),
    ("linear_probe", 1): (0.75, None),
    ("linear_probe", 2): (0.77, None),
}


def record(
    method,
    dataset,
    shots,
    seed,
    top1,
    *,
    tune="none",
    status="ok",
    backbone="RN50/openai",
    weights="a" * 64,
    preprocessing=None,
    prompts="default",
    protocol=None,
    extra_metrics=None,
    finished=None,
    overrides=None,
    trials=0,
    split_protocol=None,
    trial_batch=None,
):
    """One RunResult; ``prompts="default"`` uses the method's usual prompt set (None for the linear probe)."""
    prompt_set = PROMPTS.get(method, "coop") if prompts == "default" else prompts
    spec = {
        "method": method,
        "dataset": dataset,
        "shots": shots,
        "seed": seed,
        "backbone": backbone,
        "tune": tune,
        "trials": trials,
        "overrides": overrides or {},
        "method_version": "1",
        "dataset_version": "1",
    }
    if protocol:
        spec["protocol"] = protocol
    metrics = {"top1": top1, **(extra_metrics or {})} if status == "ok" else {}
    return RunResult.build(
        dict(
            status=status,
            spec=spec,
            run_id=sha256_json(
                [
                    method,
                    dataset,
                    shots,
                    seed,
                    tune,
                    backbone,
                    prompt_set,
                    protocol,
                    preprocessing,
                    overrides,
                    *([trials] if trials else []),
                    *([split_protocol] if split_protocol else []),
                    *([trial_batch] if trial_batch else []),
                ]
            )[:16],
            backbone={
                "id": backbone,
                "arch": backbone.split("/")[0],
                "weights_sha256": weights,
                "precision": "bf16",
            },
            data={"preprocessing": preprocessing or SHORTEST, "split_protocol": split_protocol},
            config={},
            tuning={"mode": tune, **({"sampler": {"trial_batch": trial_batch}} if trial_batch else {})},
            metrics=metrics,
            timing_s={},
            memory={},
            provenance={"finished_at": finished or f"2026-11-23T10:{shots:02d}:{seed:02d}+00:00"},
            prompts={"set": prompt_set} if prompt_set else None,
            error=None
            if status == "ok"
            else {"type": "RuntimeError", "message": "CUDA out of memory", "traceback_tail": ""},
        )
    )


def save(root: Path, r: RunResult) -> None:
    slug = r.spec["backbone"].replace("/", "__")
    write_result(
        result_path(
            root, slug, r.spec["dataset"], r.spec["method"], r.spec["shots"], r.spec["seed"], r.run_id
        ),
        r,
    )


def write_fixture_results(root: Path) -> Path:
    for (method, dataset, shots), values in ACCURACY.items():
        for seed, top1 in enumerate(values, start=1):
            save(
                root,
                record(method, dataset, shots, seed, top1, status="ok" if top1 is not None else "failed"),
            )
    save(root, record("clip_adapter", "dtd", 16, 1, 0.70, tune="oracle"))
    for (method, seed), (top1, v2, sketch) in TRANSFER.items():
        transfer = {
            "imagenet_v2": {"top1": v2, "n_test": 10000},
            "imagenet_sketch": {"top1": sketch, "n_test": 50889},
        }
        save(
            root,
            record(
                method,
                "imagenet",
                16,
                seed,
                top1,
                backbone="ViT-B-16/openai",
                weights="b" * 64,
                extra_metrics={"transfer": transfer},
            ),
        )
    for (method, seed), (base, new) in BASE2NEW.items():
        hm = None if new is None else 2 * base * new / (base + new)
        save(
            root,
            record(
                method,
                "dtd",
                16,
                seed,
                base,
                protocol="base2new",
                extra_metrics={"base_top1": base, "new_top1": new, "harmonic_mean": hm},
            ),
        )
    return root

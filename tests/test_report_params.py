"""bench report --params: the chosen hyperparameters per dataset × shots."""

import dataclasses

from bench.reports.params import params_frame, render_params
from bench.results import TuningInfo

from .report_fixtures import record


def test_params_table_takes_the_median_over_seeds():
    def tuned(seed, params, tune="val", dataset="dtd"):
        r = record("clip_adapter", dataset, 4, seed, 0.5, tune=tune)
        return dataclasses.replace(
            r, spec=dataclasses.replace(r.spec, trials=20), tuning=TuningInfo(mode=tune, best_params=params)
        )

    results = [
        tuned(1, {"alpha": 0.2, "prompts": "coop"}),
        tuned(2, {"alpha": 0.8, "prompts": "ensemble"}),
        tuned(3, {"alpha": 0.6, "prompts": "ensemble"}),
        tuned(1, {"alpha": 0.9}, dataset="eurosat"),
        tuned(1, {"alpha": 0.7}, tune="oracle"),
        record("zero_shot", "dtd", 4, 1, 0.4),
    ]
    text = render_params(params_frame(results, ["alpha", "prompts"]), "markdown")
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| clip")
    ]
    assert [
        "clip_adapter (oracle)",
        "alpha",
        "4",
        "0.70",
    ] in rows  # its own table: only dtd was tuned on test
    assert ["clip_adapter", "alpha", "4", "0.60 [0.20–0.80]", "0.90"] in rows
    assert ["clip_adapter", "prompts", "4", "ensemble (2/3)", "—"] in rows
    assert text.index("tuning: oracle") < text.index("ORACLE") < text.index("tuning: val")
    csv = render_params(params_frame(results, ["alpha"]), "csv")
    assert csv.splitlines()[0].startswith(
        "backbone,weights_sha256,tune,trials,method,param,dataset,shots,median"
    )

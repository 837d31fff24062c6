"""KgCoOp, ProGrad, TaskRes (issue 18): the identities with CoOp / zero-shot, their official pieces, and the
runner paths (base-to-new, --tune val, reports). Contract checks come from tests/test_methods_contract.py."""

import dataclasses
import math

import pytest
import torch

from bench.errors import BenchError
from bench.methods import method_registry
from bench.methods._guided import prompt_logits
from bench.methods.coop import Coop, CoopConfig, init_context
from bench.methods.kgcoop import KgCoop, knowledge_distance
from bench.methods.prograd import ProGrad, context_init, project, projected_objective, teacher_loss
from bench.methods.taskres import TaskRes
from bench.methods.zero_shot import ZeroShot
from bench.results import load_results
from tests.toy import clip_scaled_backbone, clustered_data, toy_context

NAMES = ("red stripes", "blue dots", "green waves", "yellow grid")
EPOCHS = 4


@pytest.fixture(scope="module")
def backbone():
    return clip_scaled_backbone()


@pytest.fixture(scope="module")
def data():
    return clustered_data(NAMES, per_class=8, views=3, noise=0.8)


def _test_features():
    return torch.randn(60, 64, generator=torch.Generator().manual_seed(5))


def _coop(data, backbone, **fields):
    cfg = dataclasses.replace(Coop().default_config("toy", 8), train_views=3, epochs=EPOCHS, **fields)
    return Coop().fit(data, cfg, toy_context(backbone, seed=3))


def test_kgcoop_with_zero_weight_is_coop(backbone, data):
    """λ = 0: the same context, batches and steps as CoOp from "a photo of a" with KgCoOp's batch size."""
    cfg = dataclasses.replace(
        KgCoop().default_config("toy", 8), lam=0.0, train_views=3, epochs=EPOCHS, batch_size=16
    )
    kg = KgCoop().fit(data, cfg, toy_context(backbone, seed=3))
    coop = _coop(data, backbone, ctx_init="a photo of a", batch_size=16)
    assert torch.equal(kg.ctx, coop.ctx) and torch.equal(kg.weights, coop.weights)
    features = _test_features()
    with torch.no_grad():
        assert torch.equal(kg(features), coop(features))
    moved = KgCoop().fit(data, dataclasses.replace(cfg, lam=8.0), toy_context(backbone, seed=3))
    assert not torch.equal(moved.ctx, coop.ctx)  # ... and λ > 0 does change the training


def test_kgcoop_weight_keeps_the_learned_embeddings_near_the_hand_crafted_ones(backbone):
    data = clustered_data(NAMES, per_class=8, views=3, noise=0.8)
    distances = {}
    for lam in (0.0, 8.0, 64.0):
        records = {}
        ctx = dataclasses.replace(toy_context(backbone, seed=3), record=records.__setitem__)
        cfg = dataclasses.replace(
            KgCoop().default_config("toy", 8), lam=lam, train_views=3, epochs=30, lr=0.02
        )
        KgCoop().fit(data, cfg, ctx)
        distances[lam] = records["knowledge_distance"]
        assert records["hand_crafted"] == {
            "set": "coop",
            "templates": ["a photo of a {}."],
        }  # toy: not a KgCoOp dataset
    assert distances[64.0] < distances[8.0] < distances[0.0]


def test_kgcoop_term_is_one_minus_mean_cosine():
    text = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cosines 0.6 and 1
    assert float(knowledge_distance(text, anchor)) == pytest.approx(1 - 0.8)


def test_prograd_without_projection_is_coop(backbone, data):
    """λ = 0 (projection off): CoOp, from its random context and from its phrase."""
    base = dataclasses.replace(ProGrad().default_config("toy", 8), lam=0.0, train_views=3, epochs=EPOCHS)
    for fields in ({"ctx_init": "", "n_ctx": 8}, {"ctx_init": "a photo of a", "n_ctx": 4}):
        prograd = ProGrad().fit(data, dataclasses.replace(base, **fields), toy_context(backbone, seed=3))
        coop = _coop(data, backbone, **fields)
        assert torch.equal(prograd.ctx, coop.ctx) and torch.equal(prograd.weights, coop.weights)
        with torch.no_grad():
            assert torch.equal(prograd(_test_features()), coop(_test_features()))


def test_prograd_projection_as_in_the_official_trainer():
    """``prograd_backward_and_update``: only a conflicting gradient loses λ of its component along G_g."""
    general = torch.tensor([[1.0, 0.0]])
    aligned, conflict = project(torch.tensor([[1.0, 1.0]]), general, 1.0)
    assert torch.equal(aligned, torch.tensor([[1.0, 1.0]])) and not conflict
    removed, conflict = project(torch.tensor([[-1.0, 1.0]]), general, 1.0)
    assert torch.equal(removed, torch.tensor([[0.0, 1.0]])) and conflict  # orthogonal to G_g now
    partial, _ = project(torch.tensor([[-1.0, 1.0]]), general, 0.8)
    torch.testing.assert_close(partial, torch.tensor([[-0.2, 1.0]]))
    zero, conflict = project(torch.zeros(1, 2), general, 1.0)
    assert torch.equal(zero, torch.zeros(1, 2)) and not conflict


def test_prograd_kl_term_matches_the_official_loss():
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    temperature = 2.0
    expected = (
        torch.nn.functional.kl_div(
            torch.log_softmax(student / 2, -1), torch.softmax(teacher / 2, -1), reduction="batchmean"
        )
        * 4
    )
    entropy = -(torch.softmax(teacher / 2, -1) * torch.log_softmax(teacher / 2, -1)).sum(1).mean() * 4
    torch.testing.assert_close(teacher_loss(student, teacher, temperature), expected + entropy)  # CE = KL + H


def test_prograd_objective_hands_the_optimiser_the_projected_gradient():
    """The surrogate's value is the cross-entropy and its gradient is ``project(∇CE, ∇KL)``, here with the text
    features themselves as the parameter (so both gradients can be taken directly)."""
    generator = torch.Generator().manual_seed(0)
    eye = torch.eye(3, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x = eye[y] + 0.3 * torch.randn(6, 8, generator=generator)
    param = torch.nn.Parameter(eye + 0.5 * torch.randn(3, 8, generator=generator))
    cfg = dataclasses.replace(ProGrad().default_config("toy", 8), lam=1.0)
    steps = {"all": 0, "projected": 0}
    # a teacher that agrees with the labels, then one that names every class by its neighbour's features
    for teacher in (eye, eye.roll(1, dims=0)):
        loss = projected_objective(param, teacher, cfg, 100.0, steps)(x, y, param * 1.0)
        param.grad = None
        loss.backward()
        ce = torch.nn.functional.cross_entropy(prompt_logits(x, param, 100.0), y)
        domain = torch.autograd.grad(ce, param)[0]
        teacher_logits = 100.0 * torch.nn.functional.normalize(x, dim=-1) @ teacher.t()
        general = torch.autograd.grad(
            teacher_loss(prompt_logits(x, param, 100.0), teacher_logits, 1.0), param
        )[0]
        torch.testing.assert_close(loss, ce)
        torch.testing.assert_close(param.grad, project(domain, general, 1.0)[0])
    assert steps == {"all": 2, "projected": 1}


def test_prograd_records_its_projected_steps_and_differs_from_coop(backbone, data):
    records = {}
    ctx = dataclasses.replace(toy_context(backbone, seed=3), record=records.__setitem__)
    cfg = dataclasses.replace(ProGrad().default_config("toy", 8), train_views=3, epochs=EPOCHS)
    projected = ProGrad().fit(data, cfg, ctx)
    assert records["projected_steps"]["all"] == EPOCHS and records["projected_steps"]["projected"] >= 1
    assert records["prompt"]["context"] == " ".join(["X"] * 12 + ["a photo of a"])  # toy: the coop template
    plain = ProGrad().fit(data, dataclasses.replace(cfg, lam=0.0), toy_context(backbone, seed=3))
    assert not torch.equal(projected.ctx, plain.ctx)


def test_prograd_context_is_the_template_after_zero_vectors(backbone):
    cfg = dataclasses.replace(ProGrad().default_config("dtd", 16), n_ctx=16)
    assert cfg.lam == 0.8 and cfg.epochs == 200  # README: 0.8 on Flowers/DTD/EuroSAT at 8 and 16 shots
    assert ProGrad().default_config("dtd", 4).lam == 1.0 and ProGrad().default_config("dtd", 1).epochs == 50
    vectors, text = context_init(backbone, cfg, "a texture of", 4, torch.Generator().manual_seed(0))
    phrase, _ = init_context(backbone, CoopConfig(ctx_init="a texture of"), 4, torch.Generator())
    assert vectors.shape == (16, 64) and torch.equal(vectors[-3:], phrase) and not vectors[:13].any()
    assert text == " ".join(["X"] * 13 + ["a texture of"])
    with pytest.raises(BenchError, match="n_ctx"):
        context_init(backbone, dataclasses.replace(cfg, n_ctx=2), "a texture of", 4, torch.Generator())


def test_taskres_with_zero_scale_is_zero_shot(backbone, data):
    """α = 0: the residual is trained but weighs nothing; the logits are zero-shot CLIP's (zero-shot normalises
    each template's feature before averaging: with one template that is the last bit only)."""
    cfg = dataclasses.replace(TaskRes().default_config("toy", 8), alpha=0.0, train_views=3, epochs=EPOCHS)
    taskres = TaskRes().fit(data, cfg, toy_context(backbone, seed=3))
    zero_shot = ZeroShot().fit(data, ZeroShot.Config(), toy_context(backbone))
    features = _test_features()
    with torch.no_grad():
        torch.testing.assert_close(taskres(features), zero_shot(features), rtol=1e-6, atol=1e-5)
        assert torch.equal(taskres(features).argmax(1), zero_shot(features).argmax(1))
    trained = TaskRes().fit(data, dataclasses.replace(cfg, alpha=0.5), toy_context(backbone, seed=3))
    with torch.no_grad():
        assert not torch.allclose(trained(features), zero_shot(features), atol=1e-3)
    assert not hasattr(taskres, "for_classes")  # the residual is one vector per training class


def test_taskres_defaults_follow_the_official_scripts():
    assert TaskRes().default_config("oxford_flowers", 1).alpha == 1.0
    cfg = TaskRes().default_config("imagenet", 16)
    assert (cfg.alpha, cfg.lr, cfg.epochs, cfg.prompts) == (0.5, 2e-4, 200, "coop_ensemble")
    cfg = TaskRes().default_config("dtd", 4)
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.weight_decay) == (
        2e-3,
        100,
        256,
        "adam",
        5e-4,
    )


def test_taskres_rejects_an_unknown_optimizer(backbone, data):
    cfg = dataclasses.replace(TaskRes().default_config("toy", 8), optimizer="lbfgs", epochs=1)
    with pytest.raises(BenchError, match="optimizer"):
        TaskRes().fit(data, cfg, toy_context(backbone))


NEW = ("kgcoop", "prograd", "taskres")


def test_new_methods_run_base_to_new_tune_on_val_and_report(run_options, capsys):
    """Through the runner: base2new (KgCoOp and ProGrad transfer to the new classes, TaskRes reports none),
    --tune val with two trials, then the report with --compare paper."""
    from bench.cli import main
    from bench.runner import Session, run_cells
    from bench.spec import expand_grid

    from .conftest import TINY

    session = Session(run_options)
    overrides = {name: (("epochs", 1),) for name in NEW}
    grid = expand_grid(list(NEW), ["synthetic"], [2], [1], [TINY], overrides=overrides, protocol="base2new")
    grid += expand_grid(list(NEW), ["synthetic"], [2], [1], [TINY], overrides=overrides, tune="val", trials=2)
    summary = run_cells(grid, run_options, session)
    assert not summary.failed, summary.failed
    # the records' JSON as written (what reports read)
    records = [r.to_json() for r in load_results(run_options.results_root)]  # not the extraction records
    assert sorted((r["spec"]["method"], r["spec"]["protocol"], r["spec"]["tune"]) for r in records) == sorted(
        [(m, "base2new", "none") for m in NEW] + [(m, "fewshot", "val") for m in NEW]
    )
    for record in records:
        assert record["status"] == "ok" and math.isfinite(record["metrics"]["top1"])
        if record["spec"]["protocol"] == "base2new":
            transferred = record["metrics"]["new_top1"] is not None
            assert transferred == (record["spec"]["method"] != "taskres"), record["metrics"]
        else:
            assert record["tuning"]["trials"] == 2 and set(record["tuning"]["best_params"]) <= {
                "lam",
                "alpha",
            }
    capsys.readouterr()
    assert (
        main(
            [
                "report",
                "--results",
                str(run_options.results_root),
                "--format",
                "markdown",
                "--compare",
                "paper",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert all(name in out for name in NEW)


def test_new_methods_are_registered():
    names = set(method_registry().names())
    assert set(NEW) <= names

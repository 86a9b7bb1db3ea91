"""metalib's user-facing helpers on a device other than the CPU, without a GPU.

Every test gets ``device_under_test`` (``tests/conftest.py``): the meta device, which refuses what
a GPU refuses (mixing devices in one operation, ``.numpy()``) while its values read back as zeros,
and the real accelerator when ``METALIB_DEVICE`` names one (``make test-gpu``). A helper passes
when it follows the device of the model and data it is given, and hands whatever is plotted or
tabulated back on the CPU. Numbers are checked by the modules' own tests; here only the devices.
"""

from __future__ import annotations

import ast
import json
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from conftest import tiny_learners  # noqa: E402
from metalib import (  # noqa: E402
    blackbox,
    features,
    finetune,
    hypernet,
    learned_optim,
    maml,
    meta_sgd,
    optimizees,
    plots,
    protonet,
    reptile,
    reweight,
    train,
    tta,
    weight_predictor,
    widgets,
)
from metalib.compare import compare  # noqa: E402
from metalib.data.base import ImageClasses  # noqa: E402
from metalib.data.sinusoid import SinusoidFamily  # noqa: E402
from metalib.nets import MLP, Conv4  # noqa: E402
from metalib.tasks import Episode, FixedEpisodes, sample_episodes  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _images(name: str = "rand", n_classes: int = 8, per_class: int = 6, size: int = 16):
    g = torch.Generator().manual_seed(n_classes)
    images = torch.randint(0, 256, (n_classes, per_class, size, size), generator=g)
    return ImageClasses(
        name, images.to(torch.uint8), tuple(f"c{i}" for i in range(n_classes)), ("g",) * n_classes
    )


def _episode(n_tasks: int = 2, k_shot: int = 1, queries: int = 2) -> Episode:
    """A 3-way image episode on the CPU, 16 x 16 pixels."""
    return sample_episodes(_images(), 3, k_shot, queries, n_tasks, torch.Generator().manual_seed(0))


def _sinusoids(n_tasks: int = 3) -> Episode:
    d = SinusoidFamily().sample(n_tasks, 5, 10, torch.Generator().manual_seed(0))
    return Episode(d["support_x"], d["support_y"], d["query_x"], d["query_y"])


def _on_cpu(t: torch.Tensor) -> None:
    assert t.device.type == "cpu", f"a measurement came back on {t.device}, not the CPU"


# widgets and plots -------------------------------------------------------------------------------


def test_adaptation_explorer_adapts_models_where_they_live(device_under_test):
    models = {"a": MLP().to(device_under_test), "b": MLP().to(device_under_test)}
    box = widgets.adaptation_explorer(models, SinusoidFamily(), max_steps=3)
    steps = box.children[0].children[0]
    steps.value = 2  # a redraw adapts again, on the models' device
    assert all(p.device.type == device_under_test.type for p in models["a"].parameters())


def test_plots_take_tensors_from_any_device(device_under_test):
    dev = device_under_test
    plots.image_grid(torch.rand(2, 3, 1, 8, 8).to(dev), row_labels=["a", "b"])
    plots.episode_grid(_episode().to(dev), class_names=_images().class_names)
    grid = torch.linspace(-5, 5, 20).view(-1, 1)
    plots.regression_fits(
        grid.to(dev), grid.sin().to(dev), (grid[:3].to(dev), grid[:3].to(dev)),
        {"model": grid.cos().to(dev)},
    )  # fmt: skip


# evaluation helpers ------------------------------------------------------------------------------


def test_evaluate_maml_and_meta_sgd_on_the_models_device(device_under_test):
    dev = device_under_test
    episodes = FixedEpisodes(_images(), 3, 1, 2, n_episodes=4, seed=0)  # on the CPU
    net = Conv4(n_classes=3, hidden=8, image_size=16).to(dev)
    recipe = maml.Config(n_way=3, hidden=8, test_steps=1)
    score = train.evaluate(train.accuracy_fn(partial(maml.predict, recipe, net), dev), episodes, 2)
    assert score.n == 4
    msgd = meta_sgd.MetaSGD(Conv4(n_classes=3, hidden=8, image_size=16), 0.4).to(dev)
    predict = partial(meta_sgd.predict, meta_sgd.Config(base=recipe), msgd)
    assert train.evaluate(train.accuracy_fn(predict, dev), episodes, 2).n == 4


def test_maml_training_steps_and_curve(device_under_test):
    dev = device_under_test
    net = MLP().to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for vectorise in (False, True):
        config = maml.MAMLConfig(1, 0.01, vectorise=vectorise)
        maml.meta_step(net, opt, _sinusoids().to(dev), F.mse_loss, config)
    reptile.step(net, _sinusoids().to(dev), F.mse_loss, 2, 0.02, 0.5)
    curve = maml.adaptation_curve(net, _sinusoids().to(dev), F.mse_loss, 0.01, 3)
    _on_cpu(curve)
    assert curve.shape == (3, 4)


def test_episodic_classifiers_and_pixel_nn(device_under_test):
    dev = device_under_test
    episodes = FixedEpisodes(_images(), 3, 2, 2, n_episodes=4, seed=0)
    proto = protonet.ProtoNet(Conv4(n_classes=3, hidden=8, image_size=16).body).to(dev)
    assert train.evaluate(train.episode_accuracy_fn(proto), episodes, 2).n == 4
    protonet.pixel_nearest_neighbour(_episode().to(dev))
    feats = torch.randn(8, 6, 16)  # (C, M, D) embeddings
    fe = FixedEpisodes(features.FeatureClasses("f", feats), 3, 1, 2, n_episodes=2, seed=0)
    for model in (
        blackbox.BlackBoxClassifier(torch.nn.Identity(), blackbox.SequenceLearner(16, 3, hidden=8)),
        weight_predictor.WeightPredictor(torch.nn.Identity(), 16),
    ):
        model = model.to(dev)
        loss, acc = train.episode_loss(model, fe[0].to(dev))
        loss.backward()
        assert train.evaluate(train.episode_accuracy_fn(model), fe, 1).n == 2


def test_finetuning_and_pretraining(device_under_test):
    dev = device_under_test
    net = Conv4(n_classes=8, hidden=8, image_size=16).to(dev)
    config = finetune.PretrainConfig(steps=2, batch_size=8)
    finetune.pretrain(net, _images(), config, torch.Generator())
    acc = finetune.finetune_accuracy(net, _episode(), finetune.FinetuneConfig(steps=2))
    assert acc.shape == (2,)


def test_features_come_back_on_the_cpu(device_under_test):
    encoder = Conv4(n_classes=3, hidden=8, image_size=16).body.to(device_under_test)
    f = features.embed_classes(_images(), encoder, batch_size=16)
    _on_cpu(f.features)


def test_test_time_adaptation(device_under_test):
    dev = device_under_test
    conv4 = Conv4(n_classes=4, hidden=8, image_size=16, norm="running")
    net = tta.TTTNet.from_conv4(conv4, shared_blocks=3).to(dev)
    x, y = torch.rand(12, 1, 16, 16).to(dev), torch.randint(0, 4, (12,)).to(dev)
    tta.ttt_train_step(net, x, y, torch.optim.Adam(net.parameters()), rotation_images=4)
    net.eval()
    for predict in (
        tta.bn_adapt(net),
        tta.Tent(net, lr=1e-3),
        tta.Tent(net, lr=1e-3, steps=2, episodic=True),
        tta.TTT(net, lr=1e-3, rotation_images=4),
    ):
        _on_cpu(tta.batch_errors(predict, x, y, batch_size=5))
        assert isinstance(tta.error(predict, x, y, batch_size=5), float)


def test_learned_optimizer_and_baselines(device_under_test):
    dev = device_under_test
    g = torch.Generator().manual_seed(0)
    lstm = learned_optim.LSTMOptimizer().to(dev)
    learned_optim.meta_train(
        lstm, lambda gen: optimizees.quadratics(2, gen, device=dev), 1, g, horizon=4, truncation=2
    )
    problems = optimizees.mlp_problems(_images(size=4), 2, g, 4, n_way=3, batch_size=8, device=dev)
    for loss, theta0 in ((problems.loss, problems.theta0),):
        _on_cpu(learned_optim.learned_curve(lstm, loss, theta0, 3))
        _on_cpu(optimizees.torch_curve(torch.optim.Adam, 0.1, loss, theta0, 3))
        lr, scores = optimizees.tune_lr(torch.optim.SGD, loss, theta0, 3, [0.01, 0.1])
        _on_cpu(scores)


def test_hypernetwork_and_reweighting(device_under_test):
    dev = device_under_test
    net = hypernet.HyperNetwork((1, 8, 1), generator=torch.Generator().manual_seed(0)).to(dev)

    def sample(k, gen):
        d = SinusoidFamily().sample(4, k, 6, gen)
        return tuple(d[n].to(dev) for n in ("support_x", "support_y", "query_x", "query_y"))

    hypernet.fit_hypernet(net, sample, 2, (2, 3), generator=torch.Generator().manual_seed(0))
    assert hypernet.query_mse(net, *sample(3, torch.Generator())).shape == (4,)
    x, y = torch.rand(12, 4).to(dev), torch.randint(0, 3, (12,)).to(dev)
    for method in ("plain", "small_loss", "reweight"):
        reweight.train(
            MLP(in_features=4, out_features=3, hidden=(8,)).to(dev), x, y, method, steps=2,
            batch_size=4, generator=torch.Generator(), val=(x[:6], y[:6]), rate=0.2,
        )  # fmt: skip


# the comparison ----------------------------------------------------------------------------------


def test_compare_every_method_on_the_runtime_device(device_under_test, monkeypatch, tmp_path):
    monkeypatch.setenv("METALIB_DEVICE", str(device_under_test))
    data = (_images("rand/train", n_classes=10, per_class=16), _images("rand/test", 6, 8))
    result = compare(
        None,
        shots=(1,),
        n_episodes=2,
        queries=2,
        data=data,
        overrides=tiny_learners(),
        folder=tmp_path,
    )
    assert result.device == device_under_test.type
    assert len(result) == 10


# the device is chosen in one place ---------------------------------------------------------------

ACCELERATOR_MODULES = ("torch.cuda", "torch.mps", "torch.backends.mps", "torch.backends.cudnn")


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _accelerator_literal(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.split(":")[0] in ("cuda", "mps")
    )


def device_choices(source: str) -> list[tuple[int, str]]:
    """(line, what) for every place ``source`` picks or probes an accelerator by itself."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            if any(name == m or name.startswith(m + ".") for m in ACCELERATOR_MODULES):
                found.append((node.lineno, name))
            elif node.attr in ("cuda", "is_cuda", "is_mps"):
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            args = list(node.args) + [k.value for k in node.keywords if k.arg == "device"]
            if (name.endswith(".to") or name in ("torch.device", "device")) and any(
                _accelerator_literal(a) for a in args
            ):
                found.append((node.lineno, f"{name}(...) with an accelerator's name"))
            elif any(k.arg == "device" and _accelerator_literal(k.value) for k in node.keywords):
                found.append((node.lineno, f"{name}(device=...) with an accelerator's name"))
    return found


def _sources():
    """(place, Python source) of every file and notebook code cell of the project, but runtime
    and its tests (which fake CUDA's presence) and this file."""
    root = Path(__file__).resolve().parents[1]
    exempt = {root / "metalib" / "runtime.py", root / "tests" / "test_runtime.py"}
    exempt.add(Path(__file__).resolve())
    for folder in ("metalib", "benchmarks", "tools", "hidden_tests", "tests"):
        for path in sorted((root / folder).rglob("*.py")):
            if path not in exempt:
                yield str(path.relative_to(root)), path.read_text()
    for folder in ("chapters", "exercises", "solutions"):
        for path in sorted((root / folder).glob("*.ipynb")):
            cells = json.loads(path.read_text())["cells"]
            for i, cell in enumerate(cells):
                if cell["cell_type"] == "code":
                    yield f"{path.relative_to(root)}, cell {i}", "".join(cell["source"])


def test_the_device_is_chosen_only_in_runtime():
    """``metalib.runtime`` alone asks for CUDA or MPS; everything else follows ``device()`` or its
    inputs' device (and times and measures memory through runtime's helpers)."""
    offenders = [
        f"{place}, line {line}: {what}"
        for place, source in _sources()
        for line, what in device_choices(source)
    ]
    assert not offenders, (
        "only metalib/runtime.py may name or probe an accelerator; use runtime.device(), the "
        "inputs' .device, runtime.synchronize() or runtime.device_peak_mb():\n"
        + "\n".join(offenders)
    )


def test_device_choices_finds_what_it_should():
    bad = [
        "torch.cuda.is_available()",
        "x.cuda()",
        "x.to('cuda')",
        "torch.zeros(3, device='cuda:1')",
        "torch.device('mps')",
        "if t.is_cuda: pass",
        "torch.backends.mps.is_available()",
    ]
    for source in bad:
        assert device_choices(source), source
    good = [
        "x.to(DEVICE)",
        "torch.zeros(3, device=x.device)",
        "torch.device('cpu')",
        "x.cpu()",
        "'''torch.cuda in a docstring'''",
        "# x.cuda() in a comment",
        'dev.type == "cuda"',
    ]
    for source in good:
        assert not device_choices(source), source

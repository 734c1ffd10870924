"""The torch backend of the minibatch linear models, and classify's ``device``.

The torch code runs here on torch's CPU kernels (``backend='torch'``,
``device='cpu'``) against the numpy backend on the same rows, seed and
minibatch order; the CUDA probe is mocked where a test is about choosing the
device.  The tests marked ``cuda`` need a GPU and are skipped without one.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from classify_data import config_for
from stores import blobs, dataset, write_store

from featx.classification import (
    FAMILIES,
    ClassifyConfig,
    MinibatchLinearClassifier,
    load_classifier,
    run_classification,
    save_classifier,
)
from featx.devices import cuda_device_count
from featx.errors import DeviceError

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
LOSSES = ("log_loss", "squared_hinge")
# Measured largest |coef difference| / max |coef| between the backends: 1.9e-7 (in memory) and 4.7e-7
# (blocks) over 3 seeds, i.e. a few float32 ulps from summing the products in another order, which Adam's
# normalised steps do not amplify.  Allowed: 20 times that.
COEF_RTOL = 1e-5
GPU = pytest.mark.skipif(
    not (cuda_device_count() > 0 and torch.cuda.is_available()), reason="no CUDA GPU visible to torch"
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Minibatches of 64 rows: torch's CPU threads cost more than they save, and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _problem(n=2_000, d=24, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = (rng.normal(size=(n, d)) + np.eye(classes, d)[y]).astype(np.float32)
    return X, y


def _model(loss, **settings):
    return MinibatchLinearClassifier(loss, alpha=1 / 2_000, batch_size=64, random_state=0, **settings)


def _assert_same_fit(numpy_fit, torch_fit, X):
    assert (torch_fit.n_iter_, torch_fit.converged_) == (numpy_fit.n_iter_, numpy_fit.converged_)
    assert torch_fit.converged_
    scale = np.abs(numpy_fit.coef_).max()
    assert np.abs(torch_fit.coef_ - numpy_fit.coef_).max() <= COEF_RTOL * scale
    assert np.abs(torch_fit.intercept_ - numpy_fit.intercept_).max() <= COEF_RTOL * scale
    assert np.mean(torch_fit.predict(X) == numpy_fit.predict(X)) >= 0.99
    for array in (torch_fit.coef_, torch_fit.intercept_):
        assert type(array) is np.ndarray and array.dtype == np.float32


@pytest.mark.parametrize("loss", LOSSES)
def test_the_torch_backend_fits_what_the_numpy_backend_does(loss):
    X, y = _problem()
    numpy_fit = _model(loss).fit(X, y)
    torch_fit = _model(loss, backend="torch").fit(X, y)
    assert type(torch_fit._adam).__name__ == "TorchAdam" and type(numpy_fit._adam).__name__ == "NumpyAdam"
    _assert_same_fit(numpy_fit, torch_fit, X)


def _streamed(loss, **settings):
    model = _model(loss, **settings)
    rng = np.random.default_rng(1)
    X, y = _problem()
    while True:  # 3 shuffled blocks an epoch, as stream_fit feeds them
        order = rng.permutation(len(y))
        for block in np.array_split(order, 3):
            model.partial_fit(X[block], y[block], classes=np.arange(4))
        if model.end_epoch():
            return model


def test_a_matrix_too_large_for_the_device_is_moved_minibatch_by_minibatch(monkeypatch):
    X, y = _problem()
    monkeypatch.setattr("featx.classification._torch_linear.TorchAdam._fits_on_device", lambda self, nbytes: False)
    model = _model("log_loss", backend="torch").fit(X, y)
    assert model._adam._on_device is False  # the rows were gathered from X and moved per minibatch
    _assert_same_fit(_model("log_loss").fit(X, y), model, X)


@pytest.mark.parametrize("loss", LOSSES)
def test_the_torch_backend_learns_from_blocks_what_the_numpy_backend_does(loss):
    _assert_same_fit(_streamed(loss), _streamed(loss, backend="torch"), _problem()[0])


def test_a_torch_fit_keeps_no_torch_object_and_saves_as_a_numpy_fit_does(tmp_path):
    from sklearn.pipeline import make_pipeline

    X, y = _problem()
    model = _model("log_loss", backend="torch").fit(X, y)
    state = model.__getstate__()
    assert "_adam" not in state and not any(type(v).__module__.startswith("torch") for v in state.values())
    pickled = pickle.dumps(model)
    assert b"torch." not in pickled  # a pickled tensor names torch._utils (only the backend's name is there)
    assert pickle.loads(pickled).get_params()["backend"] == "torch"
    # load_classifier refuses a type featx does not trust: the fit holds only trusted ones.
    classes = [f"class{c}" for c in range(len(model.classes_))]
    saved = save_classifier(
        tmp_path / "c.zip", make_pipeline(model), {"classifier": {"family": "logreg"}, "classes": classes}
    )
    loaded = load_classifier(saved).pipeline.steps[-1][1]
    np.testing.assert_array_equal(loaded.coef_, model.coef_)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_the_numpy_backend_runs_on_the_cpu_only():
    X, y = _problem(n=64)
    with pytest.raises(ValueError, match="The 'device' parameter of MinibatchLinearClassifier must be 'cpu' with "
                                         "the numpy backend. Got 'cuda' instead."):
        MinibatchLinearClassifier(device="cuda", backend="numpy").fit(X, y)
    with pytest.raises(ValueError, match="The 'backend' parameter of MinibatchLinearClassifier must be one of "
                                         "'numpy', 'torch' or None. Got 'jax' instead."):
        MinibatchLinearClassifier(backend="jax").fit(X, y)


# --------------------------------------------------------------------------- the device of a run


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n, torch_cuda=True)``: the CUDA driver now sees *n* GPUs, and torch has CUDA or not."""

    def set_gpus(n: int, torch_cuda: bool = True) -> None:
        monkeypatch.setattr("featx.devices.cuda_device_count", lambda: n)
        monkeypatch.setattr("featx.devices.torch_has_cuda", lambda: torch_cuda)

    return set_gpus


@pytest.mark.parametrize(("n", "expected"), [(0, "cpu"), (1, "cuda")])
def test_auto_is_the_gpu_the_driver_sees(gpus, n, expected):
    gpus(n)
    assert ClassifyConfig(features="x.h5").resolve().device == expected
    assert ClassifyConfig(features="x.h5", models="svm,logreg").resolve().device == expected
    assert ClassifyConfig(features="x.h5", device="cpu").resolve().device == "cpu"


def test_a_gpu_the_machine_lacks_is_a_one_line_error(gpus):
    gpus(0)
    with pytest.raises(DeviceError) as error:
        ClassifyConfig(features="x.h5", device="cuda").resolve()
    assert str(error.value) == (
        "device 'cuda' is not available; the CUDA driver sees no GPU on this machine; use device='cpu' or "
        "device='auto'"
    )
    gpus(1)
    with pytest.raises(DeviceError, match=r"^device 'cuda:1' is not available; this machine has 1 CUDA GPU\(s\), "
                                          r"cuda:0 to cuda:0$"):
        ClassifyConfig(features="x.h5", device="cuda:1").resolve()
    assert ClassifyConfig(features="x.h5", device="cuda:0").resolve().device == "cuda:0"
    with pytest.raises(DeviceError, match="^device must be auto, cpu, cuda or cuda:N; got 'gpu'$"):
        ClassifyConfig(features="x.h5", device="gpu")  # not a device name: refused when the configuration is made


def test_a_gpu_without_torch_cuda_cannot_fit_the_linear_models(gpus):
    gpus(1, torch_cuda=False)
    with pytest.raises(DeviceError, match=r"^device 'cuda' cannot fit svm, logreg; they run on a GPU through torch, "
                                          r"and no torch built with CUDA is installed; use device='cpu' or "
                                          r"device='auto'$"):
        ClassifyConfig(features="x.h5", models="svm,logreg,bayes", device="cuda").resolve()
    assert ClassifyConfig(features="x.h5", models="bayes,xgboost", device="cuda").resolve().device == "cuda"
    assert ClassifyConfig(features="x.h5", models="svm", device="auto").resolve().device == "cuda"


def test_the_command_line_refuses_a_missing_gpu_before_any_work(tmp_path, gpus, run_cli):
    gpus(0)
    out = tmp_path / "run"
    code, stdout, stderr = run_cli("classify", "--features", tmp_path / "absent.h5", "--device", "cuda",
                                   "--out", out)
    assert (code, stdout) == (2, "")
    assert stderr == (
        "error: device 'cuda' is not available; the CUDA driver sees no GPU on this machine; use --device cpu or "
        "--device auto\n"
    )
    assert not out.exists()


def test_the_run_device_chooses_where_and_by_what_the_families_fit(gpus):
    gpus(1)
    svm, logreg = FAMILIES["svm"], FAMILIES["logreg"]
    svm_params = ClassifyConfig(features="x.h5", models="svm").model_params["svm"]
    logreg_params = ClassifyConfig(features="x.h5", models="logreg").model_params["logreg"]
    assert svm.build(svm_params, 0).device == "cpu"  # by default: the CPU
    assert svm.build(svm_params, 0, device="cuda").device == "cuda"
    tall = logreg.build(logreg_params, 0, device="cuda", rows=1_000, features=64)
    wide = logreg.build(logreg_params, 0, device="cuda", rows=100, features=4_608)
    wide_svm = svm.build(svm_params, 0, device="cuda", rows=100, features=4_608)
    # On a GPU, logreg with rows >= columns is the minibatch softmax model there (alpha = 1 / (C n)); lbfgs else.
    assert (type(tall).__name__, tall.loss, tall.device) == ("MinibatchLinearClassifier", "log_loss", "cuda")
    assert tall.alpha == pytest.approx(1 / 1_000) and tall.max_iter == logreg_params["max_iter"]
    assert type(wide).__name__ == "LogisticRegression"
    assert type(wide_svm).__name__ == "LinearSVC"
    xgboost_params = ClassifyConfig(features="x.h5", models="xgboost").model_params["xgboost"]
    assert FAMILIES["xgboost"].build(xgboost_params, 0, device="cpu").device == "cpu"  # --device cpu: off the GPU
    assert type(logreg.build(logreg_params, 0, device="cpu", rows=1_000, features=64)).__name__ == "LogisticRegression"
    gpus(1, torch_cuda=False)  # the GPU the linear models cannot use: they fit on the CPU
    assert svm.build(svm_params, 0, device="cuda").device == "cpu"
    import xgboost

    if xgboost.build_info().get("USE_CUDA"):
        assert FAMILIES["xgboost"].build(xgboost_params, 0, device="cuda:1").device == "cuda:1"


def _tiny_store(folder: Path) -> Path:
    ids, labels, splits = dataset()
    return write_store(folder / "s.h5", ids, labels, {"f": blobs(labels, 6, seed=1)}, splits=splits)



def _fresh(script: str) -> str:
    """The last line *script* prints in a fresh interpreter (a RuntimeError if it fails: not what is tested)."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          check=False)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(done.stderr)
    return done.stdout.splitlines()[-1]


def test_saving_a_classifier_imports_no_torch(tmp_path):
    script = (
        "import sys\nimport numpy as np\nfrom sklearn.naive_bayes import GaussianNB\n"
        "from sklearn.pipeline import make_pipeline\nfrom featx.classification import save_classifier\n"
        f"save_classifier({str(tmp_path / 'c.zip')!r}, make_pipeline(GaussianNB()).fit(np.eye(3), [0, 1, 2]), {{}})\n"
        "print('torch' in sys.modules)\n"
    )
    assert _fresh(script) == "False"


def test_a_cpu_classify_run_imports_no_torch_and_records_the_device_and_solver(tmp_path):
    """The whole CPU run, saving the artifacts with skops included, imports no torch."""
    store, out = _tiny_store(tmp_path), tmp_path / "run"
    script = (
        "import sys\nfrom featx.cli import main\n"
        f"code = main(['classify', '--features', {str(store)!r}, '--model', 'svm,logreg,xgboost', '--device', 'cpu',"
        f" '--out', {str(out)!r}, '--no-plots'])\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    assert _fresh(script) == "0 False"
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["device"] == "cpu"
    # 24 training rows x 6 columns: more rows than columns, so the svm is the minibatch model.
    assert [(r["name"], r["solver"], r["device"]) for r in saved["results"]] == [
        ("svm", "MinibatchLinearClassifier", "cpu"), ("logreg", "LogisticRegression", "cpu"),
        ("xgboost", "XGBClassifier", "cpu"),
    ]


# --------------------------------------------------------------------------- on a GPU


@GPU
@pytest.mark.parametrize("loss", LOSSES)
def test_a_cuda_fit_is_the_numpy_fit(loss):
    X, y = _problem()
    numpy_fit = _model(loss).fit(X, y)
    _assert_same_fit(numpy_fit, _model(loss, device="cuda").fit(X, y), X)
    _assert_same_fit(_streamed(loss), _streamed(loss, device="cuda"), X)


@GPU
def test_a_cuda_classify_run_fits_the_linear_models_there(tmp_path):
    store = _tiny_store(tmp_path)
    run = run_classification(config_for(tmp_path, [store], models=("svm", "logreg"), device="cuda"))
    assert [(r.name, r.solver, r.device) for r in run.results] == [
        ("svm", "MinibatchLinearClassifier", "cuda"), ("logreg", "MinibatchLinearClassifier", "cuda"),
    ]
    cpu = run_classification(config_for(tmp_path / "cpu", [store], models=("svm",), device="cpu"))
    assert abs(run.results[0].accuracy - cpu.results[0].accuracy) <= 1 / run.results[0].n_test

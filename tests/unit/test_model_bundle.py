"""A run's model.safetensors is a self-contained model bundle (issue 14, item 6): features in
order, the standardization the sites applied, the label coding, the architecture and the
study's content hash; ``fedcare.load_model`` applies it to new patients and the ONNX export
gives the same predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load as st_load

import fedcare
from fedcare.config import content_hash, parse_config
from fedcare.core.dataset import TaskType
from fedcare.core.errors import DataError
from fedcare.core.params import Parameters
from fedcare.core.wire import save_parameters
from fedcare.data.builtin import load_breast_cancer
from fedcare.data.standardize import federated_standardizer
from fedcare.engine.bundle import (
    FORMAT_VERSION,
    METADATA_KEY,
    BundleError,
    ModelBundle,
    networked_bundle,
    read_bundle,
)
from fedcare.engine.history import History
from fedcare.engine.learner_factory import ModelShape, make_learner
from fedcare.engine.predict import SavedModel
from fedcare.sim.sites import build_sites


def _breast_study(model: dict | None = None, rounds: int = 3) -> dict:
    return {"study": {"name": "bc", "rounds": rounds, "seed": 3},
            "data": {"source": "builtin", "sites": 3, "partition": "iid"},
            "model": model or {"name": "mlp", "hidden": [8]},
            "baselines": {"local": False, "centralized": False}}


@pytest.fixture(scope="module")
def breast_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bc")
    fedcare.simulate(_breast_study(), output_dir=out)
    return out


def _breast_frame() -> pd.DataFrame:
    t = load_breast_cancer()
    return pd.DataFrame(t.x, columns=list(t.feature_names))


def _csv_sites(tmp_path: Path, n_sites: int = 2, rows: int = 60) -> list[Path]:
    """Sites whose label is text ("yes"/"no") with features on very different scales."""
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n_sites):
        age = rng.normal(60 + 5 * i, 10, rows)
        sbp = rng.normal(130, 20, rows)
        risk = 0.05 * (age - 60) + 0.03 * (sbp - 130) + rng.normal(0, 0.5, rows)
        frame = pd.DataFrame({"age": age, "sbp": sbp,
                              "outcome": np.where(risk > 0, "yes", "no")})
        paths.append(tmp_path / f"site{i}.csv")
        frame.to_csv(paths[-1], index=False)
    return paths


def _files_study(paths: list[Path], **data: object) -> dict:
    return {"study": {"name": "csv", "rounds": 2},
            "data": {"source": "files", "label": "outcome",
                     "site": [{"name": f"h{i}", "path": str(p)} for i, p in enumerate(paths)],
                     **data},
            "model": {"name": "logreg"}, "baselines": {"local": False, "centralized": False}}


# -- what the bundle holds ---------------------------------------------------------------------
def test_a_simulated_runs_model_file_holds_everything_needed_to_use_it(tmp_path: Path) -> None:
    paths = _csv_sites(tmp_path)
    study = _files_study(paths)
    fedcare.simulate(study, output_dir=tmp_path / "run")

    raw = (tmp_path / "run" / "model.safetensors").read_bytes()
    bundle = read_bundle(tmp_path / "run")

    header = json.loads(json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
                        ["__metadata__"][METADATA_KEY])
    assert header["format"] == "fedcare-model" and header["format_version"] == FORMAT_VERSION
    assert bundle.features == ("age", "sbp")
    assert bundle.classes == ("no", "yes") and bundle.positive == "yes"
    assert bundle.label_column == "outcome" and bundle.task is TaskType.BINARY
    assert bundle.content_hash == content_hash(parse_config(study))
    assert (bundle.model_name, bundle.input_shape, bundle.num_outputs) == ("logreg", (2,), 1)
    # The standardization is the federation's, over every site's training rows.
    unscaled = build_sites(parse_config(study).data.model_copy(update={"standardize": False}),
                           0)
    mean, std = federated_standardizer([s.x_train for s in unscaled])
    assert bundle.mean is not None and bundle.std is not None
    np.testing.assert_array_equal(bundle.mean, mean)
    np.testing.assert_array_equal(bundle.std, std)
    assert 50 < float(bundle.mean[0]) < 70  # raw units, not already-scaled ones
    # Still a plain safetensors file: any reader gets the weights under their own names.
    plain = st_load(raw)
    assert set(plain) == set(bundle.parameters)


def test_the_bundle_reproduces_what_the_model_saw_in_training(breast_run: Path) -> None:
    """Bundle applied to raw rows == the learner on the sites' (scaled) test rows."""
    cfg = parse_config(_breast_study())
    scaled = build_sites(cfg.data, cfg.study.seed)
    unscaled = build_sites(cfg.data.model_copy(update={"standardize": False}), cfg.study.seed)
    model = fedcare.load_model(breast_run)
    learner = make_learner(cfg, ModelShape.of_site(scaled[0]))

    for s, r in zip(scaled, unscaled, strict=True):
        proba = model.predict_proba(pd.DataFrame(r.x_test, columns=list(model.features)))
        logits = learner.scores(model.bundle.parameters, s.x_test)[:, 0]
        np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-logits)), atol=1e-6)


def test_load_model_predicts_new_patients_whatever_the_column_order(breast_run: Path) -> None:
    frame = _breast_frame()
    model = fedcare.load_model(breast_run / "model.safetensors")
    shuffled = frame[frame.columns[::-1]].assign(patient_id=np.arange(len(frame)))

    proba = model.predict_proba(frame)
    labels = model.predict(shuffled)

    np.testing.assert_allclose(model.predict_proba(shuffled), proba)
    assert proba.shape == (len(frame), 2) and np.allclose(proba.sum(axis=1), 1)
    assert set(labels) <= {0, 1}
    assert (labels == load_breast_cancer().y).mean() > 0.85  # it learned something


def test_text_labels_come_back_as_the_studys_values(tmp_path: Path) -> None:
    fedcare.simulate(_files_study(_csv_sites(tmp_path)), output_dir=tmp_path / "run")
    model = fedcare.load_model(tmp_path / "run")
    new = pd.DataFrame({"sbp": [100.0, 190.0], "age": [40.0, 85.0]})

    table = model.predictions(new)

    assert list(table.columns) == ["probability_no", "probability_yes", "prediction"]
    assert list(table["prediction"]) == ["no", "yes"]


def test_the_sklearn_model_predicts_and_exports(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from fedcare.engine.predict import export_onnx

    fedcare.simulate(_breast_study({"name": "sgd_linear"}, rounds=2), output_dir=tmp_path / "r")
    model = fedcare.load_model(tmp_path / "r")
    frame = _breast_frame()
    export_onnx(model, tmp_path / "m.onnx")

    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(
        None, {"features": frame.to_numpy(np.float32)})[0]

    assert model.bundle.backend == "sklearn"
    np.testing.assert_allclose(got, model.predict_proba(frame), atol=1e-5)


def test_onnx_gives_the_same_predictions_on_a_breast_cancer_model(breast_run: Path,
                                                                  tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from fedcare.engine.predict import export_onnx

    model = fedcare.load_model(breast_run)
    frame = _breast_frame()
    export_onnx(model, tmp_path / "model.onnx")

    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    got = session.run(None, {"features": frame.to_numpy(np.float32)})[0]

    np.testing.assert_allclose(got, model.predict_proba(frame), atol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(meta[METADATA_KEY])["features"] == list(model.features)


def test_a_multiclass_model_gives_one_probability_per_class(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from fedcare.engine.predict import export_onnx

    study = {"study": {"name": "mc", "rounds": 2},
             "data": {"source": "synthetic", "sites": 2, "rows_per_site": 80,
                      "n_features": 4, "classes": 3},
             "model": {"name": "mlp", "hidden": [8]},
             "baselines": {"local": False, "centralized": False}}
    fedcare.simulate(study, output_dir=tmp_path / "r")
    model = fedcare.load_model(tmp_path / "r")
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    export_onnx(model, tmp_path / "m.onnx")

    proba = model.predict_proba(x)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"features": x})[0]

    assert model.classes == (0, 1, 2) and proba.shape == (20, 3)
    np.testing.assert_allclose(got, proba, atol=1e-5)


# -- refusals ----------------------------------------------------------------------------------
def test_a_table_missing_a_feature_is_refused_by_name(breast_run: Path) -> None:
    model = fedcare.load_model(breast_run)
    with pytest.raises(DataError, match=r"lacks feature column\(s\) \['mean radius'\]"):
        model.predict(_breast_frame().drop(columns=["mean radius"]))


def test_a_text_value_in_a_feature_is_refused(breast_run: Path) -> None:
    frame = _breast_frame().astype(object)
    frame.loc[4, "mean area"] = "n/a"
    with pytest.raises(DataError, match=r"\['mean area'\].*not numeric"):
        fedcare.load_model(breast_run).predict(frame)


def test_missing_values_are_refused(breast_run: Path) -> None:
    frame = _breast_frame()
    frame.loc[[1, 2], "worst area"] = np.nan
    with pytest.raises(DataError, match=r"2 row\(s\).*\['worst area'\]"):
        fedcare.load_model(breast_run).predict_proba(frame)


def _with_header(raw: bytes, change: dict) -> bytes:
    stored_header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    doc = {**json.loads(stored_header[METADATA_KEY]), **change}
    params = ModelBundle.from_bytes(raw).parameters
    return save_parameters(params, metadata={METADATA_KEY: json.dumps(doc)})


def test_a_bundle_of_a_newer_format_is_refused(breast_run: Path, tmp_path: Path) -> None:
    raw = (breast_run / "model.safetensors").read_bytes()
    (tmp_path / "new.safetensors").write_bytes(_with_header(raw, {"format_version": 99}))
    with pytest.raises(BundleError, match=r"format version 99, newer .* upgrade fedcare"):
        fedcare.load_model(tmp_path / "new.safetensors")


def test_an_unknown_preprocessing_step_is_refused(breast_run: Path, tmp_path: Path) -> None:
    raw = (breast_run / "model.safetensors").read_bytes()
    steps = [{"step": "impute_median", "values": [0.0]}]
    (tmp_path / "m.safetensors").write_bytes(_with_header(raw, {"preprocessing": steps}))
    with pytest.raises(BundleError, match="'impute_median'"):
        fedcare.load_model(tmp_path / "m.safetensors")


def test_a_weights_only_file_says_it_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "old.safetensors"
    path.write_bytes(save_parameters(Parameters({"w": np.zeros(3, np.float32)})))
    with pytest.raises(BundleError, match="weights only"):
        fedcare.load_model(path)


def test_weights_that_do_not_fit_the_architecture_are_refused(breast_run: Path,
                                                              tmp_path: Path) -> None:
    raw = (breast_run / "model.safetensors").read_bytes()
    model = {"name": "mlp", "backend": "torch", "options": {"hidden": [9], "dropout": 0.0},
             "input_shape": [30], "num_outputs": 1}
    (tmp_path / "m.safetensors").write_bytes(_with_header(raw, {"model": model}))
    with pytest.raises(BundleError, match="do not fit model 'mlp'"):
        fedcare.load_model(tmp_path / "m.safetensors")


# -- the hub's bundle --------------------------------------------------------------------------
def test_a_networked_studys_bundle_carries_the_federations_standardization() -> None:
    cfg = parse_config({"study": {"name": "net", "rounds": 2},
                        "data": {"source": "federation", "dataset": "breast",
                                 "label": "y", "features": ["a", "b", "c"]},
                        "model": {"name": "logreg"}})
    history = History(study="net", meta={"config": cfg.model_dump(mode="json"),
                                         "config_hash": content_hash(cfg),
                                         "normalizer": {"mean": [1.0, 2.0, 3.0],
                                                        "std": [0.5, 1.0, 4.0]}})
    final = make_learner(cfg, ModelShape.of_federated(cfg.data)).initial_parameters()

    bundle = ModelBundle.from_bytes(networked_bundle("s-1", history, final).to_bytes())

    assert bundle.study_id == "s-1" and bundle.content_hash == content_hash(cfg)
    assert bundle.features == ("a", "b", "c") and bundle.classes == (0, 1)
    assert bundle.mean is not None and bundle.mean.tolist() == [1.0, 2.0, 3.0]
    assert bundle.std is not None and bundle.std.tolist() == [0.5, 1.0, 4.0]
    # A patient at the federation's mean is the model's zero input.
    at_mean = SavedModel(bundle).scores(np.array([[1.0, 2.0, 3.0]], np.float32))
    learner = make_learner(cfg, ModelShape.of_federated(cfg.data))
    np.testing.assert_allclose(at_mean, learner.scores(final, np.zeros((1, 3), np.float32)))


def test_one_table_split_into_sites_keeps_its_label_coding(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 2))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1],
                  "dx": np.where(x[:, 0] > 0, "sick", "well")}).to_csv(tmp_path / "t.csv",
                                                                       index=False)
    study = {"study": {"name": "t", "rounds": 1},
             "data": {"source": "table", "path": str(tmp_path / "t.csv"), "label": "dx",
                      "sites": 2},
             "model": {"name": "logreg"}, "baselines": {"local": False, "centralized": False}}
    fedcare.simulate(study, output_dir=tmp_path / "r")

    model = fedcare.load_model(tmp_path / "r")

    assert model.classes == ("sick", "well") and model.bundle.label_column == "dx"
    assert set(model.predict(pd.DataFrame({"a": [2.0, -2.0], "b": [0.0, 0.0]}))) <= {
        "sick", "well"}


@pytest.mark.parametrize("change", [{"model": {"name": "mlp"}}, {"task": "ranking"},
                                    {"label": {"classes": ["a"]}}, {"format": "other"},
                                    {"features": ["only one"]}])
def test_a_malformed_header_is_a_bundle_error(breast_run: Path, tmp_path: Path,
                                              change: dict) -> None:
    raw = (breast_run / "model.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(_with_header(raw, change))
    with pytest.raises(BundleError):
        fedcare.load_model(tmp_path / "m.safetensors")


def test_a_regression_model_predicts_values(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from fedcare.engine.predict import export_onnx

    rng = np.random.default_rng(2)
    paths = []
    for i in range(2):
        x = rng.normal(size=(50, 2))
        paths.append(tmp_path / f"s{i}.csv")
        pd.DataFrame({"age": 60 + 10 * x[:, 0], "sbp": 130 + 20 * x[:, 1],
                      "outcome": 3 * x[:, 0] - x[:, 1]}).to_csv(paths[-1], index=False)
    fedcare.simulate(_files_study(paths), output_dir=tmp_path / "r")
    model = fedcare.load_model(tmp_path / "r")
    new = pd.DataFrame({"age": [50.0, 70.0], "sbp": [130.0, 130.0]})
    export_onnx(model, tmp_path / "m.onnx")

    table = model.predictions(new)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(
        None, {"features": new.to_numpy(np.float32)})[0]

    assert model.task is TaskType.REGRESSION and model.classes == ()
    assert list(table.columns) == ["prediction"]
    np.testing.assert_allclose(got[:, 0], table["prediction"], atol=1e-5)
    with pytest.raises(DataError, match="regression"):
        model.predict_proba(new)


def test_a_header_cannot_make_loading_allocate_a_huge_model(breast_run: Path,
                                                            tmp_path: Path) -> None:
    """10**7 inputs x 65536 units would be 2.6 TB of float32: refused from the shapes alone."""
    raw = (breast_run / "model.safetensors").read_bytes()
    model = {"name": "mlp", "backend": "torch", "options": {"hidden": [65536], "dropout": 0.0},
             "input_shape": [10_000_000], "num_outputs": 1}
    (tmp_path / "m.safetensors").write_bytes(_with_header(raw, {
        "model": model, "preprocessing": [], "features": []}))
    with pytest.raises(BundleError, match="do not fit model 'mlp'"):
        fedcare.load_model(tmp_path / "m.safetensors")

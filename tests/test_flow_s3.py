"""The retrain flow with its store on a real S3 endpoint (moto's server), and proof that
the credentials never reach a log line or a stored artifact."""

from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from histo_flows.retrain import retrain
from histo_core.config import GateConfig, RetrainConfig, StoreConfig, TrainConfig
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout
from s3_servers import start_moto


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    endpoint = start_moto(tmp_path_factory.mktemp("moto"))
    yield endpoint
    endpoint.stop()


def test_retrain_to_s3_keeps_credentials_out_of_logs_and_artifacts(moto, tmp_path, monkeypatch, caplog, capsys):
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    client = moto.client()
    client.create_bucket(Bucket="histo-flow")
    data = tmp_path / "data"
    write_kaggle_layout(data, SyntheticSpec(count=300, seed=4))
    config = RetrainConfig(data=str(data), workdir=str(tmp_path / "work"),
                           store=StoreConfig(uri="s3://histo-flow/team-a", endpoint_url=moto.url),
                           train=TrainConfig(epochs=1), gate=GateConfig(auc_floor=0.0))
    with prefect_test_harness(server_startup_timeout=60):
        result = retrain(config)
    assert result["outcome"] == "promoted"
    assert result["artifacts"].startswith("s3://histo-flow/team-a/runs/")

    keys = [o["Key"] for o in client.list_objects_v2(Bucket="histo-flow")["Contents"]]
    assert "team-a/models/pcam-cnn/champion.json" in keys
    assert f"team-a/models/pcam-cnn/versions/{result['version']}/model_card.md" in keys
    secrets = [moto.secret_key.encode(), moto.access_key.encode()]
    for key in keys:
        body = client.get_object(Bucket="histo-flow", Key=key)["Body"].read()
        assert not any(s in body for s in secrets), key
    for path in Path(tmp_path / "work").rglob("*"):
        if path.is_file():
            assert not any(s in path.read_bytes() for s in secrets), path
    logged = caplog.text + "".join(capsys.readouterr())
    assert "champion" in logged and not any(s.decode() in logged for s in secrets)

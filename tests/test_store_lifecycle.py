"""Model artifacts and checkpoints carry the object tag the bucket's lifecycle rules match on."""

from __future__ import annotations

from blocks.resolve import open_store


def test_when_models_and_checkpoints_are_written_to_s3_then_they_carry_the_lifecycle_tag(s3_store_url, aws_env, tmp_path):
    store = open_store(s3_store_url)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    store.upload_dir(model, "dev/run-1/models/chronos")
    store.put("dev/run-1/checkpoints/step-10/state.pt", b"x")
    store.put("dev/logs/run-1/training.json", b"{}")
    store.upload_dir(model, "dev/registry/run-1/chronos")

    s3 = aws_env.client("s3")
    bucket, prefix = s3_store_url[len("s3://"):].split("/", 1)

    def tags(key: str) -> dict[str, str]:
        got = s3.get_object_tagging(Bucket=bucket, Key=f"{prefix}/{key}")["TagSet"]
        return {t["Key"]: t["Value"] for t in got}

    assert tags("dev/run-1/models/chronos/config.json") == {"lifecycle": "model-artifact"}
    assert tags("dev/run-1/checkpoints/step-10/state.pt") == {"lifecycle": "model-artifact"}
    assert tags("dev/logs/run-1/training.json") == {}
    # the champion's copy under registry/ never expires
    assert tags("dev/registry/run-1/chronos/config.json") == {}


def test_when_the_data_path_is_an_s3_uri_then_ingest_reads_it_through_the_store(s3_store_url, aws_env):
    from blocks.store import read_uri
    from chronos_flows.config.params import DataConfig, DEFAULT_DATA
    from chronos_flows.data.ingest import load_dataset

    bucket = s3_store_url[len("s3://"):].split("/", 1)[0]
    aws_env.client("s3").put_object(Bucket=bucket, Key="incoming/gasoline.csv", Body=DEFAULT_DATA.read_bytes())
    df = load_dataset(f"s3://{bucket}/incoming/gasoline.csv", DataConfig(), fetch=read_uri)
    local = load_dataset(str(DEFAULT_DATA), DataConfig())
    assert df.equals(local) and len(df) == 1355

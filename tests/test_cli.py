"""The command line as a user types it, in a child process, against the emulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(env, *args, check_rc=None):
    proc = subprocess.run([sys.executable, "-m", "aws_extension", *args], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_setup_upload_list_show_delete(aws_env, tmp_path):
    assert "Bucket sd-webui-sagemaker-local" in cli(aws_env, "setup", check_rc=0).stdout
    (tmp_path / "a.safetensors").write_bytes(b"a" * 2000)
    (tmp_path / "b.pt").write_bytes(b"b" * 10)
    up = cli(aws_env, "--json", "models", "upload", "--type", "LoRA", str(tmp_path), check_rc=0)
    results = json.loads(up.stdout)
    assert [r["status"] for r in results] == ["uploaded", "uploaded"]
    listed = json.loads(cli(aws_env, "--json", "models", "list", check_rc=0).stdout)
    assert {(m["type"], m["name"], m["size"]) for m in listed} == {("lora", "a.safetensors", 2000), ("lora", "b.pt", 10)}
    assert json.loads(cli(aws_env, "--json", "models", "list", "--type", "vae", check_rc=0).stdout) == []
    shown = json.loads(cli(aws_env, "--json", "models", "show", "--type", "Lora", "a.safetensors", check_rc=0).stdout)
    assert shown["sha256"] == results[0]["sha256"] and len(shown["sha256"]) == 64
    assert "a.safetensors" in cli(aws_env, "models", "list", check_rc=0).stdout
    cli(aws_env, "models", "delete", "--type", "lora", "a.safetensors", check_rc=0)
    gone = cli(aws_env, "models", "show", "--type", "lora", "a.safetensors", check_rc=1)
    assert gone.stderr.startswith("error: ") and "a.safetensors" in gone.stderr


def test_one_failed_item_exits_1_and_others_stay_done(aws_env, tmp_path):
    cli(aws_env, "setup", check_rc=0)
    (tmp_path / "good.ckpt").write_bytes(b"g" * 100)
    proc = cli(aws_env, "models", "upload", "--type", "checkpoint", str(tmp_path / "good.ckpt"),
               str(tmp_path / "missing.ckpt"), str(tmp_path), check_rc=1)
    assert f"error: {tmp_path / 'missing.ckpt'}: no such file" in proc.stderr
    assert "uploaded" in proc.stdout and "good.ckpt" in proc.stdout
    assert "good.ckpt" in cli(aws_env, "models", "list", check_rc=0).stdout


def test_upload_reads_the_type_from_the_file_and_refuses_a_mismatch_unless_forced(aws_env, tmp_path):
    from model_headers import write_safetensors

    cli(aws_env, "setup", check_rc=0)
    write_safetensors(tmp_path / "x.safetensors", "sdxl-lora")
    write_safetensors(tmp_path / "odd.safetensors", {"weight": (4, 4)})
    auto = cli(aws_env, "models", "upload", str(tmp_path / "x.safetensors"), check_rc=0)  # no --type: Auto
    assert "uploaded:" in auto.stdout and "/models/Lora/x.safetensors (a LoRA for SDXL, " in auto.stdout
    unknown = cli(aws_env, "models", "upload", str(tmp_path / "odd.safetensors"), check_rc=1)
    assert "odd.safetensors: cannot tell what kind of model this is; choose its type" in unknown.stderr
    wrong = cli(aws_env, "models", "upload", "--type", "checkpoint", str(tmp_path / "x.safetensors"), check_rc=1)
    assert f"error: {tmp_path / 'x.safetensors'}: this file is a LoRA for SDXL, not an SD Checkpoint" in wrong.stderr
    assert "--force" in wrong.stderr and wrong.stdout == ""
    assert json.loads(cli(aws_env, "--json", "models", "list", "--type", "checkpoint", check_rc=0).stdout) == []
    forced = cli(aws_env, "--json", "models", "upload", "--type", "checkpoint", "--force", str(tmp_path / "x.safetensors"),
                 check_rc=0)
    [result] = json.loads(forced.stdout)
    assert (result["type"], result["key"], result["detected"]) == \
        ("checkpoint", "models/Stable-diffusion/x.safetensors", "a LoRA for SDXL")
    shown = json.loads(cli(aws_env, "--json", "models", "show", "--type", "lora", "x.safetensors", check_rc=0).stdout)
    assert (shown["kind"], shown["base"]) == ("lora", "sdxl")  # what the header said, kept in the record


def test_bad_usage_exits_2(aws_env):
    assert cli(aws_env, "models", "upload", check_rc=2).stderr
    assert cli(aws_env, "endpoints", "deploy", "--endpoint-type", "batch", check_rc=2).stderr
    bad_type = cli(aws_env, "models", "list", "--type", "unet", check_rc=1)
    assert "Unknown model type 'unet'" in bad_type.stderr


def test_clear_sentences_for_missing_settings(aws_env, tmp_path):
    no_keys = {k: v for k, v in aws_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert "No AWS credentials found" in cli(no_keys, "models", "list", check_rc=1).stderr
    no_region = {k: v for k, v in aws_env.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    assert "No AWS region set" in cli(no_region, "models", "list", check_rc=1).stderr
    missing = cli(aws_env, "--bucket", "no-such-bucket-here", "models", "list", check_rc=1)
    assert "does not exist" in missing.stderr and "setup" in missing.stderr
    assert "profile 'nobody' not found" in cli(aws_env, "--profile", "nobody", "models", "list", check_rc=1).stderr


def test_default_bucket_name_uses_account_and_region(aws_env):
    env = {k: v for k, v in aws_env.items() if k != "SD_SAGEMAKER_BUCKET"}
    out = cli(env, "setup", check_rc=0).stdout
    assert "sd-webui-sagemaker-123456789012-us-east-1" in out


def test_local_prints_exports_and_serves_and_stops_whatever_the_shell(tmp_path):
    """Started as a background job of a non-interactive shell would start it (SIGINT ignored), SIGTERM stops it and
    its endpoints' servers, and nothing is left behind."""
    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SD_SAGEMAKER"))}
    env.update(PYTHONPATH=str(ROOT), AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    proc = subprocess.Popen([sys.executable, "-m", "aws_extension", "local", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        exports = {}
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if line.startswith("export "):
                name, _, value = line[7:].strip().partition("=")
                exports[name] = value.strip("'")
            elif line.startswith("#") or time.monotonic() > deadline:
                break
        assert {"AWS_ENDPOINT_URL", "AWS_REGION", "SD_SAGEMAKER_BUCKET", "AWS_ACCESS_KEY_ID"} <= set(exports)
        second_shell = {**env, **exports}
        assert "(none)" in cli(second_shell, "models", "list", check_rc=0).stdout
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Emulator stopped." in err
        assert not [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    finally:
        if proc.poll() is None:  # a failed test leaves no emulator behind either
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.parametrize("group", ["models", "endpoints", "datasets"])
def test_help_lists_commands(group):
    out = subprocess.run([sys.executable, "-m", "aws_extension", group, "--help"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert "list" in out and "delete" in out


def test_deploy_list_delete_and_cleanup(aws_env):
    cli(aws_env, "setup", check_rc=0)
    deployed = json.loads(cli(aws_env, "--json", "endpoints", "deploy", "--name", "cli-ep", "--wait", check_rc=0).stdout)
    assert deployed["status"] == "InService" and deployed["scaling_applied"]
    [listed] = json.loads(cli(aws_env, "--json", "endpoints", "list", check_rc=0).stdout)
    assert (listed["name"], listed["type"], listed["instance_type"]) == ("cli-ep", "async", "ml.g5.2xlarge")
    assert "Endpoint delete completed" in cli(aws_env, "endpoints", "delete", "cli-ep", check_rc=0).stdout
    assert "cli-ep" in cli(aws_env, "endpoints", "delete", "cli-ep", check_rc=1).stderr

    # leftovers: an endpoint removed behind the tool's back, and an upload never finished
    cli(aws_env, "endpoints", "deploy", "--name", "left-over", "--wait", check_rc=0)
    import boto3

    boto3.client("sagemaker").delete_endpoint(EndpointName="left-over")
    boto3.client("s3").create_multipart_upload(Bucket=aws_env["SD_SAGEMAKER_BUCKET"], Key="models/Lora/half.safetensors")
    dry = json.loads(cli(aws_env, "--json", "cleanup", check_rc=0).stdout)
    assert {o["kind"] for o in dry} == {"endpoint-config", "model", "scalable-target", "alarm", "multipart-upload"}
    assert json.loads(cli(aws_env, "--json", "cleanup", check_rc=0).stdout) == dry  # a dry run removes nothing
    removed = json.loads(cli(aws_env, "--json", "cleanup", "--yes", check_rc=0).stdout)
    assert len(removed) == len(dry)
    assert json.loads(cli(aws_env, "--json", "cleanup", check_rc=0).stdout) == []


def test_deploy_waits_by_default_and_attaches_the_autoscaling(aws_env):
    """AWS starts an async endpoint with one instance and takes autoscaling only once it is InService: a deploy that
    returned before that would leave a GPU billing around the clock. So it waits unless told not to."""
    import boto3

    cli(aws_env, "setup", check_rc=0)
    done = cli(aws_env, "--json", "endpoints", "deploy", "--name", "safe", check_rc=0)
    deployed = json.loads(done.stdout)
    assert (deployed["status"], deployed["scaling_applied"]) == ("InService", True)
    targets = boto3.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=["endpoint/safe/variant/AllTraffic"])["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(0, 1)]
    assert "safe: InService" in done.stderr

    quick = cli(aws_env, "endpoints", "deploy", "--name", "quick", "--no-wait", "--instance-type", "ml.g5.2xlarge",
                check_rc=0)
    assert quick.stdout.startswith("Endpoint deployment started: quick  async  Creating")
    assert "Endpoint quick runs 1 × ml.g5.2xlarge (~$1.52/h) until autoscaling is attached: run " \
           "`python -m aws_extension endpoints list` once it is InService." in quick.stdout
    assert boto3.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=["endpoint/quick/variant/AllTraffic"])["ScalableTargets"] == []
    fixed = cli(aws_env, "--json", "endpoints", "deploy", "--name", "fixed", "--no-wait", "--no-autoscaling",
                "--endpoint-type", "real-time", "--min", "2", "--max", "2", "--instance-type", "ml.g4dn.xlarge", check_rc=0)
    assert json.loads(fixed.stdout)["name"] == "fixed"  # JSON stays parseable: the sentence goes to stderr
    assert "Endpoint fixed runs 2 × ml.g4dn.xlarge (~$1.47/h) until it is deleted" in fixed.stderr
    assert cli(aws_env, "endpoints", "deploy", "--wait", "--no-wait", check_rc=2).stderr

    missing = cli(aws_env, "endpoints", "deploy", "--name", "pre", "--preload-checkpoint", "nope.safetensors",
                  check_rc=1)
    assert "nope.safetensors" in missing.stderr and "none uploaded" in missing.stderr
    for name in ("safe", "quick", "fixed"):
        cli(aws_env, "endpoints", "delete", name, check_rc=0)


def test_upload_url_from_a_local_server(aws_env, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    (tmp_path / "web.safetensors").write_bytes(b"w" * 4096)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/web.safetensors?token=SECRET"
    try:
        cli(aws_env, "setup", check_rc=0)
        refused = cli(aws_env, "models", "upload-url", "--type", "vae", url, check_rc=1)
        assert "loopback" in refused.stderr and "SECRET" not in refused.stderr
        assert "--allow-private" in refused.stderr  # the switch this user can type
        bad = cli(aws_env, "models", "upload-url", "--type", "vae", "--description", "[1]", url, check_rc=1)
        assert "JSON object" in bad.stderr
        done = cli(aws_env, "--json", "models", "upload-url", "--type", "vae", "--allow-private",
                   "--description", '{"author": "me"}', url, check_rc=0)
        [result] = json.loads(done.stdout)
        assert result["status"] == "uploaded" and result["size"] == 4096 and "SECRET" not in done.stdout
    finally:
        server.shutdown()
    shown = json.loads(cli(aws_env, "--json", "models", "show", "--type", "vae", "web.safetensors", check_rc=0).stdout)
    assert shown["description"] == {"author": "me"} and "SECRET" not in json.dumps(shown)


def test_datasets_create_list_show_delete(aws_env, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red square")
    (tmp_path / "notes.doc").write_bytes(b"not an image")
    cli(aws_env, "setup", check_rc=0)
    refused = cli(aws_env, "datasets", "create", "--name", "squares", str(tmp_path / "a.png"), str(tmp_path / "notes.doc"),
                  check_rc=1)
    assert "notes.doc" in refused.stderr
    assert json.loads(cli(aws_env, "--json", "datasets", "list", check_rc=0).stdout) == []
    created = cli(aws_env, "datasets", "create", "--name", "squares", "--description", "red ones",
                  str(tmp_path / "a.png"), str(tmp_path / "a.txt"), check_rc=0)
    assert "Complete Dataset squares creation" in created.stdout
    shown = json.loads(cli(aws_env, "--json", "datasets", "show", "squares", check_rc=0).stdout)
    assert shown["s3_uri"] == f"s3://{aws_env['SD_SAGEMAKER_BUCKET']}/datasets/squares/"
    assert sorted(f["name"] for f in shown["files"]) == ["a.png", "a.txt"] and shown["description"] == "red ones"
    assert "squares" in cli(aws_env, "datasets", "create", "--name", "squares", str(tmp_path / "a.png"), check_rc=1).stderr
    cli(aws_env, "datasets", "delete", "squares", check_rc=0)
    assert "squares" in cli(aws_env, "datasets", "show", "squares", check_rc=1).stderr


def test_generate_starts_from_the_same_sampler_as_the_tab_and_the_webui_form():
    from aws_extension.cli import build_parser
    from aws_extension.cli.generate import generate_payload
    from aws_extension.contract.request import FORM_SAMPLER

    args = build_parser().parse_args(["generate", "--endpoint", "e", "--checkpoint", "c", "--prompt", "a cat"])
    assert generate_payload(args)["sampler_name"] == FORM_SAMPLER == "DPM++ 2M"
    chosen = build_parser().parse_args(["generate", "--endpoint", "e", "--checkpoint", "c", "--prompt", "a cat",
                                        "--sampler", "Euler a"])
    assert generate_payload(chosen)["sampler_name"] == "Euler a"

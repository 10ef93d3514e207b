"""Stage logs without TensorFlow's start-up notices (pipeline.quiet), and nothing else dropped."""

import os
import subprocess
import sys


def test_importing_keras_through_quiet_drops_tensorflows_start_up_notices_only():
    code = (
        "import pipeline.quiet, keras, sys\n"
        "print('error: a real problem stays', file=sys.stderr)\n"
        "import tensorflow as tf\n"
        "tf.get_logger().warning('5 out of the last 5 calls to <f> triggered tf.function retracing.')\n"
        "tf.get_logger().warning('a real warning stays')\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "absl::InitializeLog" not in result.stderr and "oneDNN custom operations" not in result.stderr
    assert "retracing" not in result.stderr
    assert "error: a real problem stays" in result.stderr and "a real warning stays" in result.stderr


def test_only_the_notices_match_the_filter():
    from pipeline.quiet import NOISE

    assert NOISE.match(b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert NOISE.match(
        b"I0000 00:00:1796500602.840546    2347 port.cc:153] oneDNN custom operations are on. You may see ..."
    )
    assert not NOISE.match(b"E0000 00:00:1796500602.840546    2347 cuda_executor.cc:1] failed call to cuInit")
    assert not NOISE.match(b"error: params.yaml: train_cnn_focal.epochs: must be >= 1, got 0")


def test_cis_plan_prints_its_reasoning_without_tensorflows_notices():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.reproduction.plan", "--elapsed", "0", "--budget-minutes", "50"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert result.stdout.strip() in ("cpu", "quick")
    assert result.stderr.startswith("matmul ") and len(result.stderr.strip().splitlines()) == 1, result.stderr

import subprocess
import sys

# Everything the HTTP backend, the queue and the CLI load in queue mode.
BACKEND_MODULES = [
    "varco_labeler.cli",
    "varco_labeler.server",
    "varco_labeler.backend",
    "varco_labeler.queue",
    "varco_labeler.jobs",
    "varco_labeler.prelabel",
    "varco_labeler.feedback.store",
    "worker.main",
]


def test_the_backend_side_never_imports_torch_or_transformers():
    code = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in BACKEND_MODULES)
        + "heavy = [m for m in ('torch', 'transformers', 'torchvision') if m in sys.modules]\n"
        + "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""

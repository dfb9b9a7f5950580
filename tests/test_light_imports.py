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


def test_mapping_english_labels_loads_neither_numpy_nor_lemminflect():
    # lemminflect keeps every part of speech in memory and imports numpy (~40 MB of the
    # backend's RSS); the backend reads its noun lemmas itself and needs lemminflect only for
    # words outside its dictionary ("remote" is an adjective there).
    code = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in BACKEND_MODULES)
        + "from varco_labeler.labelstudio.labels import LabelMapper, warm_up\n"
        + "warm_up()\n"
        + "mapper = LabelMapper(['Cat', 'Dog', 'Person', 'Traffic light'])\n"
        + "phrases = ('two cats', 'dogs', 'people', 'traffic lights')\n"
        + "labels = [mapper.label_for(p) for p in phrases]\n"
        + "assert labels == ['Cat', 'Dog', 'Person', 'Traffic light'], labels\n"
        + "print(','.join(m for m in ('numpy', 'lemminflect') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""

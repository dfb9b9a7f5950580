"""The light backend may import the engine package's pure parts without pulling in torch."""

from __future__ import annotations

import subprocess
import sys


def test_engine_package_types_profiles_and_predict_do_not_import_torch():
    code = (
        "import sys\n"
        "import varco_labeler.engine, varco_labeler.engine.predict\n"
        "import varco_labeler.engine.openai_engine\n"
        "heavy = {'torch', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

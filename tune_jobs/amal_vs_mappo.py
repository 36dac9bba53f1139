"""AMAL vs MAPPO: a Ray Tune study (search over lambda_info / perturbation_std, then confirm on fresh seeds).

    python tune_jobs/amal_vs_mappo.py                                  # laptop: smoke preset, local Ray
    ray job submit --working-dir . -- python tune_jobs/amal_vs_mappo.py
    ray submit cluster.yaml tune_jobs/amal_vs_mappo.py                 # cluster preset

``python tune_jobs/amal_vs_mappo.py --help`` lists the presets and flags; the
study itself is ``amal_rllib.study`` (``ray submit`` copies only this file, so
the package must be installed on the head node, as the project's images do).
"""

import sys

from amal_rllib.study.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""One rank of tests/test_distributed.py's 2-process step, as a launcher starts it:

    torchrun --nproc_per_node 2 -m tests.launched_rank MODEL_DIR OUT
    accelerate launch --multi_gpu --num_processes 2 -m tests.launched_rank MODEL_DIR OUT
"""

import sys

from tests.test_distributed import step_on_this_ranks_share

if __name__ == "__main__":
    step_on_this_ranks_share(sys.argv[1], sys.argv[2])

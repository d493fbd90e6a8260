"""GPTQModel's own entry points, nothing of frankenmoe: load, quantize, save.

The reference for `make bench`: the same model, calibration windows and AWQ
settings as the `quantize` stage, as a user would run it in a notebook.
Usage: raw_gptqmodel.py MODEL_DIR WINDOWS_JSON OUT_DIR GROUP_SIZE
"""

import json
import sys

import torch
from gptqmodel import GPTQModel
from gptqmodel.quantization.config import AWQConfig

model_dir, windows_json, out_dir, group_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
torch.set_num_threads(2)
model = GPTQModel.load(
    model_dir,
    AWQConfig(bits=4, group_size=group_size, sym=False, offload_to_disk=False),
    device="cpu",
    dtype=torch.float16,
)
windows = json.load(open(windows_json))
model.quantize(
    [{"input_ids": torch.tensor(w), "attention_mask": torch.ones(len(w), dtype=torch.long)} for w in windows],
    batch_size=1,
)
model.save(out_dir)

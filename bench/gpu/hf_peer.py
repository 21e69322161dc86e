"""transformers' BitNetForCausalLM on the GPU, 2B4T shape, as the functional peer of `bitnet bench`.

Writes random bf16 master weights as a Hugging Face directory (bitnet `quantization_config`, online
mode: the ternary weights are derived from the masters at run time, as the 2B4T bf16 release is
run), so that `bitnet convert --model DIR` gives our engine the very same ternary weights; then
loads it back with transformers and times prefill and greedy generation at batch 1 and 64.

usage: python3 hf_peer.py write DIR    (the weights)
       python3 hf_peer.py time DIR     (prints one JSON line of timings)
"""

import json
import sys
import time

import torch
from transformers import BitNetConfig, BitNetForCausalLM

mode, out_dir = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
cfg = BitNetConfig(
    vocab_size=128256,
    hidden_size=2560,
    intermediate_size=6912,
    num_hidden_layers=30,
    num_attention_heads=20,
    num_key_value_heads=5,
    hidden_act="relu2",
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
)
t0 = time.time()
if mode == "write":
    with torch.device("cuda"):
        model = BitNetForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    conf = json.load(open(f"{out_dir}/config.json"))
    conf["quantization_config"] = {
            "linear_class": "autobitlinear",
            "quant_method": "bitnet",
            "quantization_mode": "online",
    }
    conf["torch_dtype"] = "bfloat16"
    json.dump(conf, open(f"{out_dir}/config.json", "w"), indent=2)
    print(f"wrote {out_dir} in {time.time() - t0:.1f} s", file=sys.stderr)
    sys.exit(0)

model = BitNetForCausalLM.from_pretrained(out_dir, torch_dtype=torch.bfloat16, device_map="cuda")
model.eval()
res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
import transformers  # noqa: E402

res["transformers"] = transformers.__version__


def sync_time(f):
    torch.cuda.synchronize()
    t = time.perf_counter()
    r = f()
    torch.cuda.synchronize()
    return time.perf_counter() - t, r


gen = torch.Generator(device="cpu").manual_seed(1)
with torch.no_grad():
    for n in (128, 512):
        ids = torch.randint(0, cfg.vocab_size, (1, n), generator=gen).cuda()
        model(ids)  # warm-up
        times = [sync_time(lambda: model(ids))[0] for _ in range(3)]
        res[f"prefill{n}_ms"] = 1e3 * sorted(times)[1]
    for batch, new in ((1, 64), (64, 64)):
        ids = torch.randint(0, cfg.vocab_size, (batch, 128), generator=gen).cuda()
        kw = dict(do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        t_pre, _ = sync_time(lambda: model(ids))
        t_all, out = sync_time(lambda: model.generate(ids, **kw))
        assert out.shape[1] == 128 + new
        res[f"decode_b{batch}_tok_s"] = batch * new / max(t_all - t_pre, 1e-9)
print(json.dumps(res))

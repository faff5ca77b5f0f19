"""vLLM's custom_class proposer: what vLLM builds in each of its workers, linking the one worker
whose drafts vLLM uses to our drafter (verifier.vllm_door).

Rules:
- vLLM builds the proposer in every worker of its last pipeline stage and takes the drafts of one
  of them only: the first tensor-parallel rank of that stage (global rank world_size - TP x PCP,
  vllm/v1/executor/multiproc_executor.py `_get_output_rank`). That worker binds the drafter
  endpoint; the others return empty drafts and open no socket.
- One engine, one drafter endpoint: data parallelism (an engine per DP rank) is refused here.
- What `ouroboros serve --verifier vllm` decided reaches this process through the environment
  (the *_ENV names below): vLLM builds the class from its config alone.
Imports neither torch nor vLLM.
"""
from __future__ import annotations

import logging
import os
import threading

from verifier.door_sessions import LOOKUP
from verifier.vllm_door import DEFAULT_TIMEOUT_S, WATCH_S, DrafterDoor

log = logging.getLogger("ouroboros.vllm")

ENDPOINT_ENV = "OUROBOROS_DRAFTER_ENDPOINT"  # where the link binds; the drafter connects there
FINGERPRINT_ENV = "OUROBOROS_TOKENIZER_FINGERPRINT"  # models.loading.tokenizer_fingerprint of the target
TIMEOUT_ENV = "OUROBOROS_DRAFT_TIMEOUT"  # seconds a step may wait for drafts (--draft-timeout)
LOOKUP_ENV = "OUROBOROS_OWN_LOOKUP_TOKENS"  # prompt-lookup tokens a row without a draft is sent (--own-lookup-tokens)
CURVE_ENV = "OUROBOROS_CURVE_KEYS"  # a directory from `ouroboros keys`: the link is a CURVE server (--curve-keys)


def is_output_rank(parallel_config) -> bool:
    """True in the worker whose drafts vLLM takes: TP rank 0 of the last pipeline stage."""
    world = int(getattr(parallel_config, "world_size", 1))
    ranks_per_stage = (int(getattr(parallel_config, "tensor_parallel_size", 1))
                       * int(getattr(parallel_config, "prefill_context_parallel_size", 1)))
    return int(getattr(parallel_config, "rank", 0)) % world == world - ranks_per_stage


class OuroborosProposer:
    """`Class(vllm_config)`, then `propose` after every step."""

    def __init__(self, vllm_config) -> None:
        missing = [name for name in (ENDPOINT_ENV, FINGERPRINT_ENV) if not os.environ.get(name)]
        if missing:
            raise RuntimeError(f"{' and '.join(missing)} not set: start vLLM with our drafter through "
                               "`ouroboros serve --verifier vllm`, which sets them")
        parallel = vllm_config.parallel_config
        if int(getattr(parallel, "data_parallel_size", 1)) > 1:
            raise RuntimeError("our drafter serves one vLLM engine: run without --data-parallel-size "
                               "(tensor parallelism is supported)")
        self.door: DrafterDoor | None = None
        if not is_output_rank(parallel):  # vLLM discards this worker's drafts
            return
        spec = vllm_config.speculative_config
        model = vllm_config.model_config
        self.door = DrafterDoor(
            os.environ[ENDPOINT_ENV], os.environ[FINGERPRINT_ENV],
            int(model.get_vocab_size()), int(spec.num_speculative_tokens),
            float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)), int(model.max_model_len),
            int(os.environ.get(LOOKUP_ENV, LOOKUP.own_lookup_tokens)), os.environ.get(CURVE_ENV) or None,
        )
        self.lock = threading.Lock()  # the door's socket is one thread's at a time
        self.stopped = threading.Event()
        self.watcher = threading.Thread(target=self.watch, name="ouroboros-door", daemon=True)
        self.watcher.start()

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None) -> list[list[int]]:
        if self.door is None:
            return [[] for _ in sampled_token_ids]
        rows = [token_ids_cpu[i, : int(num_tokens_no_spec[i])].tolist() if len(sampled) else None
                for i, sampled in enumerate(sampled_token_ids)]
        with self.lock:
            return self.door.step(rows)

    def watch(self) -> None:
        while not self.stopped.wait(WATCH_S):
            with self.lock:
                try:
                    self.door.tend()
                except Exception:  # the watch must outlive a bad moment: vLLM's steps tend the link too
                    log.exception("tending the drafter link between steps failed")

    def close(self) -> None:
        """The watch stopped, the endpoint unbound (vLLM's process ending does this too)."""
        if self.door is None:
            return
        self.stopped.set()
        self.watcher.join()
        self.door.close()

    def load_model(self, *args, **kwargs) -> None:
        """No model on vLLM's side: the draft lives in the drafter process."""

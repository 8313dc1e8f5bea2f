"""The main job: dataset → per-class models → synthetic pairs → metrics → LLM → reader study →
agreement → report. One code path over two transports (embedded, distributed)."""

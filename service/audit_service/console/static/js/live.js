// Live mode: TailEvents from now, resumed after a dropped connection from the last checkpoint_position, which the
// protocol guarantees never skips nor repeats an event. Events are handed over in batches, at most one per frame.

import { ConnectError } from "./connect.js";

const RETRY_MS = [500, 1000, 2000, 5000, 10000];

// Positions are int64, strings in protobuf JSON.
function later(position, other) {
  if (other === undefined) return position;
  return position === null || BigInt(other) > BigInt(position) ? other : position;
}

export class LiveTail {
  /**
   * @param stream (request, signal) => async iterable of TailEventsResponse
   * @param handlers {onEvents(events), onStatus(text, state), onError(error)}
   */
  constructor(stream, handlers) {
    this.stream = stream;
    this.handlers = handlers;
    this.controller = null;
    this.pending = [];
    this.frame = 0;
  }

  get running() {
    return this.controller !== null;
  }

  start(filter) {
    this.stop();
    const controller = new AbortController();
    this.controller = controller;
    this.run(filter, controller.signal);
  }

  stop() {
    this.controller?.abort();
    this.controller = null;
    this.pending = [];
  }

  async run(filter, signal) {
    let after = null;
    let failures = 0;
    while (!signal.aborted) {
      const request = after === null ? { filter } : { filter, afterPosition: after };
      try {
        this.handlers.onStatus(after === null ? "connecting" : "resuming", "connecting");
        for await (const message of this.stream(request, signal)) {
          failures = 0;
          if (message.events?.length) {
            this.deliver(message.events);
            after = later(after, message.events.at(-1).position);
          }
          // Every message carries its checkpoint; protobuf JSON leaves out a 0 (an empty log), which is one too.
          after = later(after, message.checkpointPosition ?? "0");
          if (message.caughtUp) this.handlers.onStatus("live", "live");
        }
        if (signal.aborted) return;
      } catch (error) {
        if (signal.aborted) return;
        if (!(error instanceof ConnectError) || !["unavailable", "deadline_exceeded", "internal", "unknown"]
          .includes(error.code)) {
          this.handlers.onError(error);
          this.controller = null;
          return;
        }
      }
      const wait = RETRY_MS[Math.min(failures, RETRY_MS.length - 1)];
      failures += 1;
      this.handlers.onStatus(`reconnecting in ${Math.round(wait / 100) / 10} s`, "reconnecting");
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  deliver(events) {
    this.pending.push(...events);
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      const batch = this.pending;
      this.pending = [];
      if (batch.length && this.controller) this.handlers.onEvents(batch);
    });
  }
}

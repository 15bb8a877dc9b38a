//! One thread per loaded model, fed by a bounded queue, as text-embeddings-inference's backend is:
//! handlers never run a model on the async runtime, and requests waiting for the same model with
//! the same options are run together, up to the batch size, in one call of the pipeline.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use zoo_pipeline::{LoadError, Outcome, Pipeline};
use zoo_runtime::{Input, Task, TaskArgs};

use crate::metrics::Metrics;

/// Where a model is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Loading,
    Ready,
    Failed(String),
}

/// What a finished job hands back: an outcome per input, or why the options could not be used.
pub struct Done {
    pub outcomes: Result<Vec<Outcome>, RunError>,
}

/// A job's options that the model could not be loaded with (a bad value: `usage`), or a failure
/// loading it for them.
#[derive(Debug, Clone)]
pub struct RunError {
    pub message: String,
    pub usage: bool,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The queue holds `--max-queue` jobs already.
    Full(usize),
    Loading,
    Failed(String),
    ShuttingDown,
}

struct Job {
    inputs: Vec<Input>,
    options: TaskArgs,
    key: String,
    reply: oneshot::Sender<Done>,
    enqueued: Instant,
    deadline: Instant,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// How long a batch that is not full waits for more requests, once clients have been seen to
/// come concurrently: a few HTTP round trips on one machine, little beside a model run.
const BATCH_WAIT: Duration = Duration::from_millis(5);

/// Moves the queued jobs with `batch[0]`'s options into `batch`, while they fit in `max_batch`.
fn take_matching(queue: &mut Queue, batch: &mut Vec<Job>, size: &mut usize, max_batch: usize) {
    let mut at = 0;
    while at < queue.jobs.len() && *size < max_batch {
        let job = &queue.jobs[at];
        if job.key == batch[0].key && *size + job.inputs.len() <= max_batch {
            *size += job.inputs.len();
            batch.push(queue.jobs.remove(at).expect("in range"));
        } else {
            at += 1;
        }
    }
}

/// A served model: its task, id, state and queue; the thread that owns its pipeline.
pub struct Worker {
    pub task: &'static dyn Task,
    /// The catalogue id (or Hub id, or folder) as `zoo run --model` takes it.
    pub model_id: String,
    state: Mutex<State>,
    queue: Mutex<Queue>,
    wake: Condvar,
    max_queue: usize,
    /// Inputs per run: `--max-batch`, else the pipeline's batch size once it is loaded.
    max_batch: AtomicUsize,
    /// The protocol outputs its results have (see [`Worker::outputs`]), known after the warm-up.
    outputs: Mutex<Vec<&'static str>>,
    /// Whether the last batch showed requests arriving together (see [`Worker::next_batch`]).
    concurrent: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub fn new(
        task: &'static dyn Task,
        model_id: String,
        max_queue: usize,
        max_batch: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Worker {
            task,
            model_id,
            state: Mutex::new(State::Loading),
            queue: Mutex::new(Queue { jobs: VecDeque::new(), closed: false }),
            wake: Condvar::new(),
            max_queue,
            max_batch: AtomicUsize::new(max_batch.unwrap_or(0)),
            outputs: Mutex::new(vec!["json"]),
            concurrent: AtomicBool::new(false),
            metrics,
        })
    }

    pub fn state(&self) -> State {
        self.state.lock().expect("state lock").clone()
    }

    /// The Open Inference Protocol outputs of this model: `json` always; `label` and `score`,
    /// `text`, `image` as its results have them (seen in the warm-up's result).
    pub fn outputs(&self) -> Vec<&'static str> {
        self.outputs.lock().expect("outputs lock").clone()
    }

    pub fn queue_depth(&self) -> usize {
        self.queue.lock().expect("queue lock").jobs.len()
    }

    /// Queues `inputs` with `options` (already checked by name); the answer comes on the receiver.
    /// Refused at once when the queue is full, the model is not ready, or the server is stopping.
    pub fn submit(
        &self,
        inputs: Vec<Input>,
        options: TaskArgs,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Done>, Refused> {
        match self.state() {
            State::Ready => {}
            State::Loading => return Err(Refused::Loading),
            State::Failed(why) => return Err(Refused::Failed(why)),
        }
        let (reply, receiver) = oneshot::channel();
        let mut queue = self.queue.lock().expect("queue lock");
        if queue.closed {
            return Err(Refused::ShuttingDown);
        }
        if queue.jobs.len() >= self.max_queue {
            return Err(Refused::Full(self.max_queue));
        }
        let key = options.canonical();
        queue.jobs.push_back(Job { inputs, options, key, reply, enqueued: Instant::now(), deadline });
        drop(queue);
        self.wake.notify_one();
        Ok(receiver)
    }

    /// Stops taking jobs; the thread finishes those queued and ends.
    pub fn close(&self) {
        self.queue.lock().expect("queue lock").closed = true;
        self.wake.notify_all();
    }

    /// The thread's body: load, warm up, then serve jobs until closed.
    pub fn run(self: Arc<Self>, load: impl FnOnce() -> Result<Pipeline, LoadError>) {
        let mut pipeline = match load() {
            Ok(pipeline) => pipeline,
            Err(e) => {
                *self.state.lock().expect("state lock") = State::Failed(e.one_line());
                return;
            }
        };
        if let Some(input) = self.task.warmup_input() {
            let outcomes = pipeline.run(&[input]);
            let Some(Ok(prediction)) = outcomes.first().map(|o| &o.result) else {
                let error = outcomes.first().and_then(Outcome::error).unwrap_or_default();
                *self.state.lock().expect("state lock") = State::Failed(format!("warming up: {error}"));
                return;
            };
            let mut outputs = vec!["json"];
            if prediction.label().is_some() {
                outputs.extend(["label", "score"]);
            }
            if prediction.text().is_some() {
                outputs.push("text");
            }
            if prediction.image(zoo_runtime::ImageFormat::Png).is_some() {
                outputs.push("image");
            }
            *self.outputs.lock().expect("outputs lock") = outputs;
        }
        if self.max_batch.load(Ordering::Relaxed) == 0 {
            self.max_batch.store(pipeline.batch_size().clamp(1, 256), Ordering::Relaxed);
        }
        *self.state.lock().expect("state lock") = State::Ready;
        while let Some(batch) = self.next_batch() {
            self.run_batch(&mut pipeline, batch);
        }
    }

    /// The next job, with every queued job of the same options that fits beside it; `None` once
    /// closed and drained. Jobs whose client left, or whose time ran out, are dropped unrun.
    ///
    /// Taking only what is queued at that instant splits closed-loop clients into two halves
    /// that alternate (while one half runs, the other queues): so when the last batch showed
    /// concurrent clients, a batch that is not full waits up to [`BATCH_WAIT`] for more, as
    /// Triton's dynamic batcher does. A lone client never waits.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let max_batch = self.max_batch.load(Ordering::Relaxed).max(1);
        let mut queue = self.queue.lock().expect("queue lock");
        let first = loop {
            self.drop_abandoned(&mut queue);
            if let Some(first) = queue.jobs.pop_front() {
                break first;
            }
            if queue.closed {
                return None;
            }
            // Woken by a new job; the timeout lets abandoned jobs be noticed while idle.
            queue = self.wake.wait_timeout(queue, Duration::from_secs(1)).expect("queue lock").0;
        };
        let mut size = first.inputs.len();
        let mut batch = vec![first];
        take_matching(&mut queue, &mut batch, &mut size, max_batch);
        if size < max_batch && self.concurrent.load(Ordering::Relaxed) {
            let until = Instant::now() + BATCH_WAIT;
            while size < max_batch && !queue.closed {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                queue = self.wake.wait_timeout(queue, left).expect("queue lock").0;
                self.drop_abandoned(&mut queue);
                take_matching(&mut queue, &mut batch, &mut size, max_batch);
            }
        }
        self.concurrent.store(batch.len() > 1 || !queue.jobs.is_empty(), Ordering::Relaxed);
        Some(batch)
    }

    fn drop_abandoned(&self, queue: &mut Queue) {
        let now = Instant::now();
        let before = queue.jobs.len();
        queue.jobs.retain(|job| !job.reply.is_closed() && job.deadline > now);
        self.metrics.abandoned(&self.model_id, (before - queue.jobs.len()) as u64);
    }

    fn run_batch(&self, pipeline: &mut Pipeline, batch: Vec<Job>) {
        let started = Instant::now();
        // Every job in a batch has the same options (see `take_matching`).
        let options = batch[0].options.clone();
        let mut inputs = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            self.metrics.queued_for(&self.model_id, started.duration_since(job.enqueued));
            replies.push((job.reply, job.inputs.len()));
            inputs.extend(job.inputs);
        }
        let result = pipeline.run_with(&options, &inputs);
        self.metrics.ran(&self.model_id, inputs.len(), started.elapsed());
        match result {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (reply, count) in replies {
                    let mine: Vec<Outcome> = outcomes.by_ref().take(count).collect();
                    let _ = reply.send(Done { outcomes: Ok(mine) });
                }
            }
            Err(error) => {
                // One option set per batch, so every job in it gets the same refusal.
                let error = RunError { message: error.one_line(), usage: error.is_usage() };
                for (reply, _) in replies {
                    let _ = reply.send(Done { outcomes: Err(error.clone()) });
                }
            }
        }
    }
}

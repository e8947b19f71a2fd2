//! Jobs: what a job declares ([`JobSpec`]), its resolved parameters ([`Params`]), the plan of one
//! run ([`RunPlan`]) and the [`JobBuilder`] a job function receives on every worker.
//!
//! A job function is called once per worker thread, each time building the same dataflow. It is
//! also called once, in a dry run, before the workers start, so that a bad parameter or an unknown
//! source name is reported once, clearly, before anything runs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use timely::dataflow::Scope;

use crate::connector::{Connectors, ResolvedSink, ResolvedSource};
use crate::context::{BuildContext, TStream};
use crate::metrics::Metrics;
use crate::record::{CsvRecord, DeadLetter};
use crate::stream::{SourceStage, Stream};
use crate::time::Time;
use crate::{Data, Result};

pub use crate::context::{ParticipantKind, DEAD_LETTERS};

/// A source a job reads.
#[derive(Clone, Copy, Debug)]
pub struct SourceSpec {
    /// The job's name for it (`payments`): the key of `--source NAME=URI`.
    pub name: &'static str,
    /// The record type it carries, for `paystream jobs`.
    pub record: &'static str,
    /// One line on what it is.
    pub about: &'static str,
}

/// A sink a job writes.
#[derive(Clone, Copy, Debug)]
pub struct SinkSpec {
    /// The job's name for it (`windows`): the key of `--sink NAME=URI`.
    pub name: &'static str,
    /// One line on what it receives, including its columns.
    pub about: &'static str,
}

/// A parameter a job takes (`--set NAME=VALUE`).
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    /// Its name.
    pub name: &'static str,
    /// Its default value, as text.
    pub default: &'static str,
    /// One line on what it does, with its unit.
    pub about: &'static str,
}

/// The function that builds a job's dataflow.
pub type BuildFn = fn(&mut JobBuilder<'_>, &Params) -> Result<()>;

/// Everything the engine and the CLI need to know about a job.
#[derive(Clone, Copy, Debug)]
pub struct JobSpec {
    /// The job's name (`throughput-windows`), as given to `paystream run`.
    pub name: &'static str,
    /// One paragraph on what it computes.
    pub about: &'static str,
    /// Its sources.
    pub sources: &'static [SourceSpec],
    /// Its sinks.
    pub sinks: &'static [SinkSpec],
    /// Its parameters.
    pub params: &'static [ParamSpec],
    /// Builds its dataflow.
    pub build: BuildFn,
}

/// A job's parameters, resolved: declared defaults overridden by `--config` and `--set`.
#[derive(Clone, Debug, Default)]
pub struct Params {
    job: String,
    values: BTreeMap<String, String>,
}

impl Params {
    /// Resolves `overrides` against the job's declared parameters; an unknown name is an error.
    pub fn resolve(spec: &JobSpec, overrides: &BTreeMap<String, String>) -> Result<Params> {
        let mut values: BTreeMap<String, String> = spec.params.iter().map(|p| (p.name.to_string(), p.default.to_string())).collect();
        for (k, v) in overrides {
            if !values.contains_key(k) {
                let known: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
                bail!(
                    "job {} has no parameter {k:?}; its parameters are: {} (see `paystream jobs`)",
                    spec.name,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                );
            }
            values.insert(k.clone(), v.clone());
        }
        Ok(Params { job: spec.name.to_string(), values })
    }

    /// The value of parameter `name`, parsed as `T`.
    pub fn get<T: FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let text = self.values.get(name).ok_or_else(|| anyhow!("job {} reads parameter {name:?} but does not declare it", self.job))?;
        text.parse::<T>().map_err(|e| anyhow!("parameter {name}={text:?} of job {}: {e}; set it with --set {name}=VALUE", self.job))
    }

    /// All resolved values, by name.
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }
}

/// One run of a job, with every source, sink and parameter resolved and checked.
#[derive(Clone, Debug)]
pub struct RunPlan {
    /// The job.
    pub spec: JobSpec,
    /// Its parameters.
    pub params: Params,
    /// Each declared source, resolved by its connector.
    pub sources: BTreeMap<String, ResolvedSource>,
    /// Each declared sink, plus [`DEAD_LETTERS`], resolved by its connector.
    pub sinks: BTreeMap<String, ResolvedSink>,
    /// The connectors the run resolves URIs with (typed sources are resolved as the job reads them).
    pub connectors: Arc<Connectors>,
}

impl RunPlan {
    /// Resolves a run: URIs given on the command line override the defaults (the connectors'
    /// default source, and the connectors' default sink in the directory of the first sink given
    /// with a directory, else in `./out/JOB/`); dead letters go to the sink `dead_letters` in that
    /// same directory.
    pub fn resolve(
        spec: &JobSpec,
        sources: &BTreeMap<String, String>,
        sinks: &BTreeMap<String, String>,
        params: &BTreeMap<String, String>,
        connectors: Arc<Connectors>,
    ) -> Result<RunPlan> {
        for name in sources.keys() {
            if !spec.sources.iter().any(|s| s.name == name) {
                let known: Vec<&str> = spec.sources.iter().map(|s| s.name).collect();
                bail!("job {} has no source {name:?}; its sources are: {}", spec.name, known.join(", "));
            }
        }
        for name in sinks.keys() {
            if name != DEAD_LETTERS && !spec.sinks.iter().any(|s| s.name == name) {
                let known: Vec<&str> = spec.sinks.iter().map(|s| s.name).chain([DEAD_LETTERS]).collect();
                bail!("job {} has no sink {name:?}; its sinks are: {}", spec.name, known.join(", "));
            }
        }
        let mut resolved_sources = BTreeMap::new();
        for s in spec.sources {
            let uri = match sources.get(s.name) {
                Some(u) => u.as_str(),
                None if connectors.default_source_uri().is_empty() => {
                    bail!("source {} of job {} needs a URI: --source {}=URI", s.name, spec.name, s.name)
                }
                None => connectors.default_source_uri(),
            };
            resolved_sources.insert(s.name.to_string(), connectors.resolve_source(s.name, uri)?);
        }
        let mut given: BTreeMap<String, ResolvedSink> = BTreeMap::new();
        for (name, uri) in sinks {
            given.insert(name.clone(), connectors.resolve_sink(name, uri)?);
        }
        // Sinks not given on the command line go beside the first one that was given with a
        // directory, else under out/JOB/: side outputs (late records, dead letters) land beside
        // the results.
        let base_dir = spec
            .sinks
            .iter()
            .filter_map(|s| given.get(s.name))
            .find_map(|sink| sink.target.directory())
            .unwrap_or_else(|| PathBuf::from(format!("out/{}", spec.name)));
        let mut resolved_sinks = BTreeMap::new();
        for name in spec.sinks.iter().map(|s| s.name).chain([DEAD_LETTERS]) {
            let sink = match given.remove(name) {
                Some(sink) => sink,
                None => {
                    let uri = connectors.default_sink_uri(&base_dir, name);
                    if uri.is_empty() {
                        bail!("sink {name} of job {} needs a URI: --sink {name}=URI", spec.name);
                    }
                    connectors.resolve_sink(name, &uri)?
                }
            };
            resolved_sinks.insert(name.to_string(), sink);
        }
        Ok(RunPlan { spec: *spec, params: Params::resolve(spec, params)?, sources: resolved_sources, sinks: resolved_sinks, connectors })
    }

    /// The context a worker's dataflow for this run is built in.
    pub(crate) fn build_context(&self, metrics: Arc<Metrics>, dry_run: bool) -> BuildContext {
        BuildContext::new(self.spec.name, self.sinks.clone(), self.connectors.clone(), metrics, dry_run)
    }
}

/// What a job function receives: the place to declare sources, and the context every stream
/// carries. Streams returned by [`JobBuilder::source`] are chained into operators and sinks.
pub struct JobBuilder<'scope> {
    pub(crate) scope: Scope<'scope, Time>,
    pub(crate) plan: Arc<RunPlan>,
    pub(crate) ctx: Rc<BuildContext>,
    pub(crate) dead_letters: Rc<RefCell<Vec<TStream<'scope, DeadLetter>>>>,
}

impl<'scope> JobBuilder<'scope> {
    pub(crate) fn new(scope: Scope<'scope, Time>, plan: Arc<RunPlan>, ctx: BuildContext) -> Self {
        JobBuilder { scope, plan, ctx: Rc::new(ctx), dead_letters: Default::default() }
    }

    /// Reads the declared source `name`, with records of type `T`. Give it event time next, with
    /// [`SourceStage::assign_timestamps`].
    pub fn source<T: Data + CsvRecord>(&mut self, name: &str) -> Result<SourceStage<'scope, T>> {
        let Some(uri) = self.plan.sources.get(name).cloned() else {
            bail!("job {} reads source {name:?} but does not declare it in its JobSpec", self.plan.spec.name);
        };
        if !self.ctx.used_sources.borrow_mut().insert(name.to_string()) {
            bail!("source {name:?} is read twice; read it once and reuse the stream");
        }
        self.ctx.register_step(name);
        self.ctx.add_participant(ParticipantKind::Source(name.to_string()));
        Ok(SourceStage::new(self.scope, self.ctx.clone(), self.dead_letters.clone(), name.to_string(), uri))
    }

    /// The job's parameters.
    pub fn params(&self) -> &Params {
        &self.plan.params
    }

    /// This worker's index and the number of workers in the whole run.
    pub fn worker(&self) -> (usize, usize) {
        (self.scope.index(), self.scope.peers())
    }

    /// Called by the runtime after the job function: wires dead letters to their sink and reports
    /// structural errors (duplicate names, declared but unused sinks).
    pub(crate) fn finish(self) -> Result<Vec<ParticipantKind>> {
        let dead: Vec<_> = self.dead_letters.borrow_mut().drain(..).collect();
        if !dead.is_empty() {
            let merged = timely::dataflow::operators::Concatenate::concatenate(&self.scope, dead);
            Stream::from_parts(merged, self.ctx.clone()).sink(DEAD_LETTERS)?;
        }
        let spec = &self.plan.spec;
        for s in spec.sources {
            if !self.ctx.used_sources.borrow().contains(s.name) {
                self.ctx.errors.borrow_mut().push(format!("source {:?} is declared but never read", s.name));
            }
        }
        for s in spec.sinks {
            if !self.ctx.used_sinks.borrow().contains(s.name) {
                self.ctx.errors.borrow_mut().push(format!("sink {:?} is declared but never written", s.name));
            }
        }
        let errors = self.ctx.errors.borrow();
        if !errors.is_empty() {
            bail!("job {} is malformed: {}", spec.name, errors.join("; "));
        }
        Ok(self.ctx.participants.borrow().clone())
    }
}

//! Metrics every webstack process exports besides its role's own: `webstack_build_info` and the
//! standard `process_*` families (CPU, memory, file descriptors, threads, start time), read
//! from `/proc/self` at each scrape as Prometheus' own client libraries do.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// This build's version, as `webstack --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Registers `webstack_build_info{version}` and the `process_*` families on `registry`.
pub fn register_process(registry: &mut Registry) {
    registry.register(
        "webstack_build",
        "The webstack build this process runs (value 1)",
        Info::new(vec![("version".to_string(), VERSION.to_string())]),
    );
    registry.register_collector(Box::new(ProcessCollector));
}

/// Reads `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What one scrape reads about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessSample {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    threads: i64,
    start_time_seconds: f64,
    open_fds: i64,
    max_fds: i64,
}

impl ProcessSample {
    fn read() -> Option<ProcessSample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096);
        let mut sample = parse_stat(&stat, ticks, page, boot_time)?;
        sample.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|dir| dir.count() as i64)
            .unwrap_or(0);
        sample.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft as i64)
            .unwrap_or(0);
        Some(sample)
    }
}

/// Fields of `/proc/<pid>/stat` (proc(5)): the command may hold spaces and parentheses, so
/// the fields are counted after its last ')'.
fn parse_stat(stat: &str, ticks: f64, page: i64, boot_time: u64) -> Option<ProcessSample> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcessSample {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)? as i64,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)? as i64,
        resident_bytes: field(24)? as i64 * page,
        ..ProcessSample::default()
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = ProcessSample::read() else {
            return Ok(());
        };
        let counter = ConstCounter::new(sample.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            counter.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                sample.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                sample.virtual_bytes as f64,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                sample.threads as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                sample.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                sample.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                sample.max_fds as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Which text a scraper asked for: Prometheus itself prefers OpenMetrics; `curl`, `promtool
/// check metrics` and most other tools read only the classic format (version 0.0.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

impl Format {
    /// From an `Accept` header: OpenMetrics only when the client names it (with a non-zero q)
    /// before or above the classic text; anything else gets the classic format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        let mut best: Option<(Format, f32)> = None;
        for item in accept.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let format = match media.as_str() {
                "application/openmetrics-text" => Format::OpenMetrics,
                "text/plain" | "text/*" | "*/*" => Format::Classic,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(_, best_q)| q > best_q) {
                best = Some((format, q));
            }
        }
        best.map_or(Format::Classic, |(format, _)| format)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// `registry` in this format.
    pub fn encode(self, registry: &Registry) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        match self {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut body, registry)?,
            Format::Classic => {
                prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?
            }
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_classic_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.5, application/openmetrics-text;q=0.9")),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("image/png")), Format::Classic);
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_even_with_parentheses_in_it() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss
        let stat = "42 (web (x) y) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 7 0 1000 123456789 300 18446744073709551615";
        let sample = parse_stat(stat, 100.0, 4096, 1_700_000_000).unwrap();
        assert_eq!(sample.cpu_seconds, 3.0);
        assert_eq!(sample.threads, 7);
        assert_eq!(sample.start_time_seconds, 1_700_000_010.0);
        assert_eq!(sample.virtual_bytes, 123_456_789);
        assert_eq!(sample.resident_bytes, 300 * 4096);
        assert!(parse_stat("garbage", 100.0, 4096, 0).is_none());
        assert!(parse_stat("x)", 100.0, 4096, 0).is_none());
    }

    #[test]
    fn this_process_reads_and_both_formats_encode() {
        let sample = ProcessSample::read().expect("/proc/self is readable");
        assert!(sample.resident_bytes > 0 && sample.open_fds > 0 && sample.threads >= 1);
        let mut registry = Registry::default();
        register_process(&mut registry);
        let classic = Format::Classic.encode(&registry).unwrap();
        assert!(
            classic.contains("# TYPE process_cpu_seconds_total counter"),
            "{classic}"
        );
        assert!(
            classic.contains("webstack_build_info{version=\""),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
        let open = Format::OpenMetrics.encode(&registry).unwrap();
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}

//! Reading a process's Prometheus metrics: its exposition over plain HTTP,
//! as a scraper would, or its registry in process.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over HTTP/1.0: the status and the body. `None` when the
/// server cannot be reached or answers something that is not HTTP.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// The exposition text of `addr`'s `/metrics`, or `None` if it is not
/// served.
pub async fn scrape(addr: SocketAddr) -> Option<String> {
    match http_get(addr, "/metrics").await? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// The sum over every series of `name` whose labels include all of
/// `labels` (0 when there is none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The sum over every counter or gauge series of `name` in `registry`
/// whose labels include all of `labels` (0 when there is none): the same
/// reading as [`metric`], in process.
pub fn registered(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().to_vec())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::{metric, registered};

    #[test]
    fn sums_matching_series() {
        let text = "# HELP x y\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\nx_total{a=\"2\"} 10\nx_totals 7\ny 1.5\n";
        assert_eq!(metric(text, "x_total", &[("a", "1")]), 7.0);
        assert_eq!(metric(text, "x_total", &[]), 17.0);
        assert_eq!(metric(text, "x_total", &[("b", "3")]), 4.0);
        assert_eq!(metric(text, "y", &[]), 1.5);
        assert_eq!(metric(text, "z", &[]), 0.0);
    }

    #[test]
    fn reads_counters_and_gauges_from_a_registry() {
        let registry = prometheus::Registry::new();
        let calls = prometheus::IntCounterVec::new(
            prometheus::Opts::new("calls_total", "calls"),
            &["op", "result"],
        )
        .unwrap();
        let held = prometheus::IntGauge::new("held", "held").unwrap();
        registry.register(Box::new(calls.clone())).unwrap();
        registry.register(Box::new(held.clone())).unwrap();
        calls.with_label_values(&["send", "ok"]).inc_by(2);
        calls.with_label_values(&["send", "error"]).inc();
        calls.with_label_values(&["get", "ok"]).inc();
        held.set(5);
        assert_eq!(registered(&registry, "calls_total", &[("op", "send")]), 3.0);
        assert_eq!(
            registered(
                &registry,
                "calls_total",
                &[("op", "send"), ("result", "ok")]
            ),
            2.0
        );
        assert_eq!(registered(&registry, "calls_total", &[]), 4.0);
        assert_eq!(registered(&registry, "held", &[]), 5.0);
        assert_eq!(registered(&registry, "nothing", &[]), 0.0);
    }
}

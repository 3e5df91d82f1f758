//! The admin API's routes as data: every method and path the router answers, for the audit
//! line (which route, which target) and for the tests (every route × every kind of token). A
//! unit test below reads the routers' own source and fails when a path segment they match is
//! missing here, so a new route cannot be forgotten.

/// One route: a method and a path pattern whose `{…}` segments match any one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path pattern, e.g. `/v1/amphorae/{id}`.
    pub path: &'static str,
}

impl Route {
    /// True for a route that changes something (any method but `GET` and `HEAD`): it needs the
    /// `admin` role when tokens are configured.
    pub fn mutating(&self) -> bool {
        mutating(self.method)
    }

    /// Whether `segments` (the path split on `/`, ends trimmed, as the router splits it) match.
    fn matches(&self, segments: &[&str]) -> bool {
        let pattern = self.path.trim_matches('/').split('/');
        pattern.clone().count() == segments.len()
            && pattern.zip(segments).all(|(p, s)| (p.starts_with('{') && p.ends_with('}')) || p == *s)
    }
}

/// True for a method that may change something (anything but `GET` and `HEAD`).
pub fn mutating(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD")
}

const fn r(method: &'static str, path: &'static str) -> Route {
    Route { method, path }
}

/// Every route of the admin API (literal segments before `{…}` ones where both could match).
pub const ROUTES: &[Route] = &[
    r("GET", "/healthz"),
    r("GET", "/metrics"),
    r("GET", "/v1/stats"),
    r("GET", "/v1/latency"),
    r("GET", "/v1/history"),
    r("GET", "/v1/whoami"),
    r("GET", "/v1/amphorae"),
    r("GET", "/v1/amphorae/{id}"),
    r("PATCH", "/v1/amphorae/{id}"),
    r("PUT", "/v1/amphorae/{id}"),
    r("DELETE", "/v1/amphorae/{id}"),
    r("POST", "/v1/amphorae/{id}/failover"),
    r("GET", "/v1/failovers"),
    r("GET", "/v1/failovers/{id}"),
    r("GET", "/v1/cluster"),
    r("POST", "/v1/cluster/digest"),
    r("POST", "/v1/cluster/view"),
    r("GET", "/v1/services"),
    r("POST", "/v1/services"),
    r("GET", "/v1/services/resolve"),
    r("POST", "/v1/services/lock"),
    r("POST", "/v1/services/unlock"),
    r("POST", "/v1/services/flush"),
    r("GET", "/v1/service-types"),
    r("GET", "/v1/pools"),
    r("POST", "/v1/pools"),
    r("DELETE", "/v1/pools/{name}"),
    r("GET", "/v1/pools/{name}/next"),
    r("POST", "/v1/pools/{name}/poll"),
    r("GET", "/v1/volumes"),
    r("POST", "/v1/volumes"),
    r("GET", "/v1/volumes/{id}"),
    r("PATCH", "/v1/volumes/{id}"),
    r("DELETE", "/v1/volumes/{id}"),
    r("POST", "/v1/volumes/{id}/state"),
];

/// The route a request goes to and the values of its `{…}` segments (`None`: no such route,
/// the answer is 404 or 405).
pub fn find<'a>(method: &str, path: &'a str) -> Option<(&'static Route, Vec<&'a str>)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route = ROUTES.iter().find(|r| r.method == method && r.matches(&segments))?;
    let targets = route
        .path
        .trim_matches('/')
        .split('/')
        .zip(&segments)
        .filter(|(p, _)| p.starts_with('{'))
        .map(|(_, s)| *s)
        .collect();
    Some((route, targets))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn routes_are_found_with_their_targets() {
        let (r, t) = find("DELETE", "/v1/amphorae/abc").unwrap();
        assert_eq!((r.path, t), ("/v1/amphorae/{id}", vec!["abc"]));
        let (r, t) = find("POST", "/v1/services/lock").unwrap();
        assert_eq!((r.path, t.len()), ("/v1/services/lock", 0));
        assert_eq!(find("GET", "/healthz/").unwrap().0.path, "/healthz");
        assert!(find("GET", "/v1/amphorae/a/b").is_none());
        assert!(find("DELETE", "/v1/stats").is_none());
        assert!(find("GET", "/").is_none());
        assert!(find("POST", "/v1/pools/p/poll").unwrap().0.mutating());
        assert!(!find("GET", "/v1/pools/p/next").unwrap().0.mutating());
    }

    /// Every literal path segment the routers match on is in [`ROUTES`]: a route added to the
    /// router without an entry here (and so without a row in the access tests) fails this test.
    #[test]
    fn every_segment_the_routers_match_is_in_the_route_table() {
        let known: std::collections::BTreeSet<&str> =
            ROUTES.iter().flat_map(|r| r.path.trim_matches('/').split('/')).collect();
        let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
        let mut checked = 0;
        for src in
            [include_str!("mod.rs"), include_str!("plane.rs"), include_str!("console.rs"), include_str!("forward.rs")]
        {
            for line in src.lines().map(str::trim) {
                if !(line.contains("[\"v1\"") || line.contains("[\"healthz\"]") || line.contains("[\"metrics\"]")) {
                    continue;
                }
                // Each pattern on the line: from an opening bracket to the next closing one.
                for (at, _) in line.match_indices("[\"") {
                    let pattern = &line[at..line[at..].find(']').map_or(line.len(), |e| at + e)];
                    for lit in pattern.split('"').skip(1).step_by(2) {
                        if !methods.contains(&lit) {
                            assert!(
                                known.contains(lit),
                                "the router matches {lit:?} ({line}); add its routes to ROUTES"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 40, "the scan found the routers' patterns ({checked} segments)");
    }
}

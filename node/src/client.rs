//! The CLI side of the local API: find the running node through
//! node.json, send it a `Request`, follow its progress. A stale node.json
//! (after `kill -9`) never blocks offline use: no live pid or no answer
//! means "no node", and the command runs in-process instead.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use meshstudio_codec::Observer;
use serde_json::Value;

use crate::cli::progress::interrupted;
use crate::node::info::{self, NodeInfo};
use crate::request::{Request, RequestError};

/// How long a node may take to answer "are you there?".
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the CLI checks for Ctrl-C while a request runs in the node.
const POLL: Duration = Duration::from_millis(50);

pub struct Remote {
    info: NodeInfo,
    agent: ureq::Agent,
}

impl Remote {
    /// The node serving `data_dir`, if one is running and answers.
    pub fn find(data_dir: &Path) -> Option<Remote> {
        let info = info::read(data_dir).filter(|i| info::pid_alive(i.pid))?;
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(PROBE_TIMEOUT))
            .build();
        let remote = Remote {
            info,
            agent: config.into(),
        };
        remote.status().ok()?;
        Some(remote)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.info.api)
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.info.token)
    }

    pub fn status(&self) -> Result<Value, String> {
        let mut resp = self
            .agent
            .get(&self.url("/v1/status"))
            .header("Authorization", &self.auth())
            .call()
            .map_err(|e| e.to_string())?;
        resp.body_mut().read_json().map_err(|e| e.to_string())
    }

    /// Runs `request` in the node, feeding progress to `observer`.
    pub fn execute(
        &self,
        request: &Request,
        observer: &dyn Observer,
    ) -> Result<Value, RequestError> {
        let lost = |e: String| RequestError::Invalid(format!("lost the node: {e}"));
        let body = serde_json::to_vec(request).expect("requests serialize");
        let agent = ureq::Agent::config_builder().build().new_agent();
        let resp = agent
            .post(&self.url("/v1/request"))
            .header("Authorization", &self.auth())
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| lost(e.to_string()))?;
        let (lines_tx, lines) = mpsc::channel::<Result<Value, String>>();
        let reader = BufReader::new(resp.into_body().into_reader());
        std::thread::spawn(move || forward_lines(reader, lines_tx));
        let mut done = 0;
        let mut stop_sent = false;
        loop {
            if interrupted() && !stop_sent && request.uses_engine() {
                // Ctrl-C ends a take or playback normally: the node keeps
                // the take and still answers.
                stop_sent = self.stop_engine();
            } else if interrupted() && !stop_sent {
                // Leaving closes the connection; the node sees that and cancels.
                return Err(RequestError::Cancelled);
            }
            let line = match lines.recv_timeout(POLL) {
                Ok(line) => line.map_err(lost)?,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(lost("the reply ended early".into()));
                }
            };
            if let Some(finished) = handle_line(&line, observer, &mut done) {
                return finished;
            }
        }
    }
}

impl Remote {
    /// Asks the node to end its recording or playback; false if it could not be asked.
    fn stop_engine(&self) -> bool {
        let body = serde_json::to_vec(&Request::Stop).expect("requests serialize");
        self.agent
            .post(&self.url("/v1/request"))
            .header("Authorization", &self.auth())
            .header("Content-Type", "application/json")
            .send(&body[..])
            .is_ok()
    }
}

fn forward_lines(reader: impl BufRead, tx: mpsc::Sender<Result<Value, String>>) {
    for line in reader.lines() {
        let parsed = line
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::from_str(&l).map_err(|e| e.to_string()));
        if tx.send(parsed).is_err() {
            return;
        }
    }
}

/// Progress goes to the observer; the final line ends the request.
fn handle_line(
    line: &Value,
    observer: &dyn Observer,
    done: &mut u64,
) -> Option<Result<Value, RequestError>> {
    if let Some(p) = line.get("progress") {
        if p.get("total").is_some() {
            observer.total(p["total"].as_u64());
            *done = 0;
        }
        if let Some(now) = p["done"].as_u64() {
            observer.advance(now.saturating_sub(*done));
            *done = now;
        }
        return None;
    }
    if let Some(reply) = line.get("reply") {
        return Some(Ok(reply.clone()));
    }
    let message = line["error"]
        .as_str()
        .unwrap_or("the node sent an unreadable reply");
    if line["cancelled"] == true {
        return Some(Err(RequestError::Cancelled));
    }
    Some(Err(RequestError::Invalid(message.to_string())))
}

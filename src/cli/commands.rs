//! Client commands: each one is a request to a node's API and a rendering
//! of its answer (a table, or the JSON with `--json`).

use super::client::Client;
use super::table::render;
use super::{Cli, CliError, Command, KvCmd, LeaderCmd, NodeCmd, SubmitArgs, TaskCmd};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use std::io::BufRead;
use std::time::{Duration, Instant};

/// How a command prints: the JSON answer, and its rendering for people.
type Out<'a> = &'a dyn Fn(&Value, &dyn Fn(&Value) -> String);

fn seg(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(v: &Value) -> String {
    let text = s(v);
    if text.len() > 12 && text.starts_with("12D3") {
        text[text.len() - 8..].to_owned()
    } else {
        text
    }
}

/// Runs a client command.
pub fn run_client(cli: Cli) -> Result<(), CliError> {
    let base = cli
        .api
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let c = Client::new(&base, cli.token_file.as_deref())?;
    let json_out = cli.json;
    let out = |v: &Value, human: &dyn Fn(&Value) -> String| {
        if json_out {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            println!("{}", human(v));
        }
    };
    match cli.command {
        Command::Status => out(&c.call("GET", "/v1/status", None)?, &status_text),
        Command::Nodes { status } => {
            let q = status
                .map(|s| format!("?status={}", seg(&s)))
                .unwrap_or_default();
            out(&c.call("GET", &format!("/v1/nodes{q}"), None)?, &nodes_text)
        }
        Command::Node(NodeCmd::Drain { id }) => out(
            &c.call(
                "POST",
                &format!("/v1/nodes/{}/drain", seg(&id)),
                Some(&json!({})),
            )?,
            &|v| format!("node {} is draining", s(&v["node"])),
        ),
        Command::Node(NodeCmd::Remove { id }) => out(
            &c.call("DELETE", &format!("/v1/nodes/{}", seg(&id)), None)?,
            &|v| format!("node {} removed", s(&v["node"])),
        ),
        Command::Leader {
            action: Some(LeaderCmd::Recover),
        } => out(
            &c.call("POST", "/v1/leader/recover", Some(&json!({})))?,
            &|v| {
                format!(
                    "control plane recovered: {} holds the lease in term {}; left out as lost: {}",
                    s(&v["leader"]["id"]),
                    s(&v["leader"]["term"]),
                    v["lost"]
                        .as_array()
                        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                )
            },
        ),
        Command::Leader { action: None } => out(&c.call("GET", "/v1/leader", None)?, &|v| match &v
            ["leader"]
        {
            Value::Null => "no lease holder".into(),
            l => format!("{} (term {})", s(&l["id"]), s(&l["term"])),
        }),
        Command::Task(cmd) => task(&c, cmd, &out)?,
        Command::Kv(cmd) => kv(&c, cmd, &out)?,
        Command::Balance { strategy: None } => out(&c.call("GET", "/v1/balance", None)?, &|v| {
            format!("default strategy: {}", s(&v["strategy"]))
        }),
        Command::Balance { strategy: Some(st) } => out(
            &c.call("PUT", "/v1/balance", Some(&json!({"strategy": st})))?,
            &|v| format!("default strategy set to {}", s(&v["strategy"])),
        ),
        Command::Stats => out(&c.call("GET", "/v1/cluster/stats", None)?, &|v| {
            serde_json::to_string_pretty(v).unwrap_or_default()
        }),
        Command::Audit { limit } => out(
            &c.call("GET", &format!("/v1/audit?limit={limit}"), None)?,
            &|v| {
                let rows: Vec<Vec<String>> = v["records"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            s(&r["at"]),
                            s(&r["action"]),
                            short(&r["subject"]),
                            short(&r["by"]),
                            s(&r["detail"]),
                        ]
                    })
                    .collect();
                render(&["at", "action", "subject", "by", "detail"], &rows)
            },
        ),
        Command::Events => events(&c)?,
        Command::Init { .. }
        | Command::Start(_)
        | Command::Demo(_)
        | Command::HandlerGuard { .. } => unreachable_command()?,
    }
    Ok(())
}

fn unreachable_command() -> Result<(), CliError> {
    Err(CliError::usage("this command does not talk to a node"))
}

fn status_text(v: &Value) -> String {
    let n = &v["node"];
    let c = &v["cluster"];
    let leader = match &v["leader"] {
        Value::Null => "none".to_owned(),
        l => format!("{} (term {})", s(&l["id"]), s(&l["term"])),
    };
    format!(
        "node     {} ({})\nstatus   {}  tasks {}/{}  capabilities {}\ncluster  {} node(s): {} alive, {} suspect, {} dead, {} draining, {} left ({} removed); {} p2p peer(s) connected\ntasks    {}\nstrategy {}\nleader   {}",
        s(&n["id"]),
        s(&n["name"]),
        s(&n["status"]),
        s(&n["running"]),
        s(&n["capacity"]),
        n["capabilities"].as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join(",")).unwrap_or_default(),
        s(&c["nodes"]),
        s(&c["alive"]),
        s(&c["suspect"]),
        s(&c["dead"]),
        s(&c["draining"]),
        s(&c["left"]),
        s(&c["removed"]),
        s(&v["peers"]),
        c["tasks"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
        s(&c["strategy"]),
        leader,
    )
}

fn nodes_text(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            vec![
                s(&n["id"]),
                s(&n["name"]),
                s(&n["status"]),
                format!("{}/{}", s(&n["running"]), s(&n["capacity"])),
                format!("{:.0}%", n["cpu"].as_f64().unwrap_or(0.0) * 100.0),
                format!("{:.0}%", n["memory"].as_f64().unwrap_or(0.0) * 100.0),
                n["capabilities"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                n["tags"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", s(v)))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    render(
        &[
            "id",
            "name",
            "status",
            "tasks",
            "cpu",
            "mem",
            "capabilities",
            "tags",
        ],
        &rows,
    )
}

fn task_text(t: &Value) -> String {
    let mut lines = vec![
        format!("id        {}", s(&t["id"])),
        format!("status    {}", s(&t["status"])),
        format!("capability {}", s(&t["capability"])),
        format!("node      {}", s(&t["node"])),
        format!(
            "attempt   {}/{}  fence {}",
            s(&t["attempt"]),
            s(&t["max_attempts"]),
            s(&t["fence"])
        ),
    ];
    if !t["result"].is_null() {
        lines.push(format!("result    {}", t["result"]));
    }
    if !t["error"].is_null() {
        lines.push(format!("error     {}", s(&t["error"])));
    }
    if !t["reason"].is_null() {
        lines.push(format!("waiting   {}", s(&t["reason"])));
    }
    lines.join("\n")
}

fn payload_of(arg: Option<&str>) -> Result<Value, CliError> {
    let Some(text) = arg else {
        return Ok(Value::Null);
    };
    let text = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read payload file {path}: {e}")))?,
        None => text.to_owned(),
    };
    serde_json::from_str(&text)
        .map_err(|e| CliError::usage(format!("--payload is not valid JSON: {e}")))
}

fn submit_body(a: &SubmitArgs) -> Result<Value, CliError> {
    let mut body =
        json!({"capability": a.capability, "payload": payload_of(a.payload.as_deref())?});
    let m = body.as_object_mut().expect("object");
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    set("key", a.key.clone().map(Value::from));
    set("strategy", a.strategy.clone().map(Value::from));
    set("affinity", a.affinity.clone().map(Value::from));
    set("max_attempts", a.max_attempts.map(Value::from));
    set("timeout_secs", a.timeout.map(Value::from));
    Ok(body)
}

fn task(c: &Client, cmd: TaskCmd, out: Out<'_>) -> Result<(), CliError> {
    match cmd {
        TaskCmd::Submit(a) => out(
            &c.call("POST", "/v1/tasks", Some(&submit_body(&a)?))?,
            &|t| format!("{}\n{}", s(&t["id"]), task_text(t)),
        ),
        TaskCmd::Get { id } => out(
            &c.call("GET", &format!("/v1/tasks/{}", seg(&id)), None)?,
            &task_text,
        ),
        TaskCmd::Cancel { id } => out(
            &c.call(
                "POST",
                &format!("/v1/tasks/{}/cancel", seg(&id)),
                Some(&json!({})),
            )?,
            &task_text,
        ),
        TaskCmd::List {
            status,
            node,
            capability,
            limit,
            before,
        } => {
            let mut q = Vec::new();
            for (k, v) in [
                ("status", status),
                ("node", node),
                ("capability", capability),
                ("limit", limit.map(|l| l.to_string())),
                ("before", before),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", seg(&v)));
                }
            }
            let path = format!("/v1/tasks?{}", q.join("&"));
            out(&c.call("GET", &path, None)?, &|v| {
                let rows: Vec<Vec<String>> = v["tasks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        vec![
                            s(&t["id"]),
                            s(&t["capability"]),
                            s(&t["status"]),
                            short(&t["node"]),
                            s(&t["attempt"]),
                            s(&t["fence"]),
                        ]
                    })
                    .collect();
                let table = render(
                    &["id", "capability", "status", "node", "attempt", "fence"],
                    &rows,
                );
                match v["next"].as_str() {
                    Some(next) => format!(
                        "{table}\n{} of {} shown; older ones: --before {next}",
                        rows.len(),
                        s(&v["count"])
                    ),
                    None => table,
                }
            })
        }
        TaskCmd::Wait { id, timeout } => {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            loop {
                let t = c.call("GET", &format!("/v1/tasks/{}", seg(&id)), None)?;
                let status = s(&t["status"]);
                if ["succeeded", "failed", "cancelled"].contains(&status.as_str()) {
                    out(&t, &task_text);
                    if status == "succeeded" {
                        return Ok(());
                    }
                    return Err(CliError::failed(format!("task {id} {status}")));
                }
                if Instant::now() >= deadline {
                    return Err(CliError::failed(format!(
                        "task {id} still {status} after {timeout} s"
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

fn kv_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn kv(c: &Client, cmd: KvCmd, out: Out<'_>) -> Result<(), CliError> {
    let entry_text = |v: &Value| {
        let mut t = format!("{}", v["value"]);
        if v["siblings"].as_array().is_some_and(|a| a.len() > 1) && v["policy"] == "mv" {
            t.push_str(&format!("\nsiblings: {}", v["siblings"]));
        }
        t
    };
    match cmd {
        KvCmd::Put { ns, key, value } => out(
            &c.call(
                "PUT",
                &format!("/v1/kv/{}/{}", seg(&ns), seg(&key)),
                Some(&kv_value(&value)),
            )?,
            &|v| {
                format!(
                    "{}/{} = {}  version {}",
                    s(&v["ns"]),
                    s(&v["key"]),
                    v["value"],
                    v["version"]
                )
            },
        ),
        KvCmd::Get { ns, key } => out(
            &c.call("GET", &format!("/v1/kv/{}/{}", seg(&ns), seg(&key)), None)?,
            &entry_text,
        ),
        KvCmd::Del { ns, key } => {
            c.call(
                "DELETE",
                &format!("/v1/kv/{}/{}", seg(&ns), seg(&key)),
                None,
            )?;
            out(&json!({"deleted": true, "ns": ns, "key": key}), &|_| {
                format!("deleted {ns}/{key}")
            })
        }
        KvCmd::List {
            ns,
            since,
            limit,
            after,
        } => {
            let q: Vec<String> = [
                ("since", since),
                ("limit", limit.map(|l| l.to_string())),
                ("after", after),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", seg(&v?))))
            .collect();
            out(
                &c.call("GET", &format!("/v1/kv/{}?{}", seg(&ns), q.join("&")), None)?,
                &|v| {
                    let rows: Vec<Vec<String>> = v["entries"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| vec![s(&e["key"]), e["value"].to_string()])
                        .collect();
                    let more = v["next"]
                        .as_str()
                        .map(|n| format!("\nmore keys follow: --after {n}"))
                        .unwrap_or_default();
                    format!(
                        "{}\nversion {}  digest {}{more}",
                        render(&["key", "value"], &rows),
                        v["version"],
                        s(&v["digest"])
                    )
                },
            )
        }
        KvCmd::Policy { ns, policy } => out(
            &c.call(
                "PUT",
                &format!("/v1/kv/{}", seg(&ns)),
                Some(&json!({"policy": policy})),
            )?,
            &|v| format!("namespace {} uses policy {}", s(&v["ns"]), s(&v["policy"])),
        ),
    }
    Ok(())
}

fn events(c: &Client) -> Result<(), CliError> {
    let reader = std::io::BufReader::new(c.stream("/v1/events")?);
    for line in reader.lines() {
        let line = line.map_err(|e| CliError::failed(format!("event stream ended: {e}")))?;
        if let Some(data) = line.strip_prefix("data:") {
            println!("{}", data.trim());
        }
    }
    Ok(())
}

//! Tests of the API selection: the testbed state file, each precedence rule, and when the
//! TLS folder is required.

use super::*;
use crate::config::tests::GOOD;

fn unix(p: &str) -> Endpoint {
    Endpoint::Unix(p.into())
}

fn tcp(hp: &str) -> Endpoint {
    Endpoint::Tcp(hp.into())
}

fn testbed() -> Result<Option<TestbedApi>> {
    Ok(Some(TestbedApi {
        endpoint: unix("/tb/api.sock"),
        token_file: Some("/tb/api.token".into()),
    }))
}

fn flag(controller: &str) -> ApiSelection {
    ApiSelection {
        controller: Some(controller.into()),
        ..ApiSelection::default()
    }
}

fn env_controller(controller: &str) -> ApiEnv {
    ApiEnv {
        controller: Some(controller.into()),
        ..ApiEnv::default()
    }
}

/// A fresh, empty folder under the system's temporary folder.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fs-client-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_single_testbed_state_names_the_api() {
    let dir = scratch("testbed");
    assert_eq!(testbed_api(&dir).unwrap(), None, "no directory");
    std::fs::create_dir_all(dir.join("testbed-ab12")).unwrap();
    assert_eq!(testbed_api(&dir).unwrap(), None, "no state file");
    let state = dir.join("testbed-ab12/state.json");
    std::fs::write(
        &state,
        r#"{"api": "unix:/run/flowshift/testbed-ab12/api.sock"}"#,
    )
    .unwrap();
    assert_eq!(
        testbed_api(&dir).unwrap(),
        Some(TestbedApi {
            endpoint: unix("/run/flowshift/testbed-ab12/api.sock"),
            token_file: None,
        })
    );
    std::fs::write(
        &state,
        r#"{"api": "/x/api.sock", "api_token_file": "/x/api.token"}"#,
    )
    .unwrap();
    assert_eq!(
        testbed_api(&dir).unwrap(),
        Some(TestbedApi {
            endpoint: unix("/x/api.sock"),
            token_file: Some("/x/api.token".into()),
        })
    );
    std::fs::write(&state, "{").unwrap();
    let e = testbed_api(&dir).unwrap_err().to_string();
    assert!(e.starts_with("parsing "), "{e}");
    std::fs::write(&state, "{}").unwrap();
    assert_eq!(testbed_api(&dir).unwrap(), None, "no api field");
    std::fs::create_dir_all(dir.join("testbed-cd34")).unwrap();
    std::fs::write(dir.join("testbed-cd34/state.json"), "{}").unwrap();
    let e = testbed_api(&dir).unwrap_err().to_string();
    assert!(e.starts_with("several testbeds found"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_endpoint_comes_from_flag_config_environment_testbed_then_default() {
    let cfg = ClusterConfig::from_toml(GOOD).unwrap();
    let env = env_controller("unix:/env.sock");
    let none = ApiEnv::default();
    let pick = |sel: &ApiSelection, cfg, env, tb| resolve(sel, cfg, env, tb).unwrap().endpoint;
    let sel = flag("unix:/flag.sock");
    assert_eq!(pick(&sel, Some(&cfg), &env, testbed()), unix("/flag.sock"));
    let sel = ApiSelection::default();
    assert_eq!(
        pick(&sel, Some(&cfg), &env, testbed()),
        tcp("127.0.0.1:6780")
    );
    assert_eq!(pick(&sel, None, &env, testbed()), unix("/env.sock"));
    assert_eq!(pick(&sel, None, &none, testbed()), unix("/tb/api.sock"));
    assert_eq!(pick(&sel, None, &none, Ok(None)), tcp(DEFAULT_CONTROLLER));
}

#[test]
fn bad_endpoints_are_refused_with_their_source_named() {
    let e = resolve(&flag("nonsense"), None, &ApiEnv::default(), Ok(None)).unwrap_err();
    assert!(e.to_string().starts_with("--controller: "), "{e}");
    let e = resolve(
        &ApiSelection::default(),
        None,
        &env_controller("x"),
        Ok(None),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("FLOWSHIFT_CONTROLLER: "), "{e}");
}

#[test]
fn a_testbed_error_matters_only_when_the_endpoint_depends_on_it() {
    let broken = || Err(anyhow!("two testbeds"));
    let sel = ApiSelection::default();
    let e = resolve(&sel, None, &ApiEnv::default(), broken()).unwrap_err();
    assert_eq!(e.to_string(), "two testbeds");
    let env = env_controller("unix:/env.sock");
    let r = resolve(&sel, None, &env, broken()).unwrap();
    assert_eq!((r.endpoint, r.token_file), (unix("/env.sock"), None));
    let r = resolve(&flag("unix:/f.sock"), None, &ApiEnv::default(), broken()).unwrap();
    assert_eq!(r.endpoint, unix("/f.sock"));
}

#[test]
fn the_token_file_comes_from_flag_config_environment_then_the_matching_testbed() {
    let cfg = ClusterConfig::from_toml(GOOD).unwrap();
    let env = ApiEnv {
        token_file: Some("/env.token".into()),
        ..ApiEnv::default()
    };
    let token = |sel: &ApiSelection, cfg, env, tb| resolve(sel, cfg, env, tb).unwrap().token_file;
    let sel = ApiSelection {
        token_file: Some("/flag.token".into()),
        ..ApiSelection::default()
    };
    assert_eq!(
        token(&sel, Some(&cfg), &env, testbed()),
        Some("/flag.token".into())
    );
    let sel = ApiSelection::default();
    assert_eq!(
        token(&sel, Some(&cfg), &env, testbed()),
        Some("/etc/flowshift/api.token".into())
    );
    // A configuration without a token file means "no token", not "look further".
    let tokenless = GOOD.replace("api_token_file = \"/etc/flowshift/api.token\"\n", "");
    let tokenless = ClusterConfig::from_toml(&tokenless).unwrap();
    assert_eq!(token(&sel, Some(&tokenless), &env, testbed()), None);
    assert_eq!(
        token(&sel, None, &env, testbed()),
        Some("/env.token".into())
    );
    let none = ApiEnv::default();
    assert_eq!(
        token(&sel, None, &none, testbed()),
        Some("/tb/api.token".into())
    );
    // The testbed's token goes only to the testbed's API.
    assert_eq!(
        token(&flag("unix:/other.sock"), None, &none, testbed()),
        None
    );
    assert_eq!(
        token(&flag("unix:/tb/api.sock"), None, &none, testbed()),
        Some("/tb/api.token".into())
    );
}

#[test]
fn the_tls_folder_comes_from_flag_environment_then_the_configured_ca() {
    let cfg = ClusterConfig::from_toml(GOOD).unwrap();
    let env = ApiEnv {
        tls_dir: Some("/env-pki".into()),
        ..ApiEnv::default()
    };
    let dir = |sel: &ApiSelection, cfg, env| resolve(sel, cfg, env, Ok(None)).unwrap().tls_dir;
    let sel = ApiSelection {
        tls_dir: Some("/flag-pki".into()),
        ..ApiSelection::default()
    };
    assert_eq!(dir(&sel, Some(&cfg), &env), Some("/flag-pki".into()));
    let sel = ApiSelection::default();
    assert_eq!(dir(&sel, Some(&cfg), &env), Some("/env-pki".into()));
    let none = ApiEnv::default();
    assert_eq!(dir(&sel, Some(&cfg), &none), Some("pki".into()));
    assert_eq!(dir(&sel, None, &none), None);
}

#[test]
fn a_unix_api_needs_no_credentials_and_a_tcp_one_needs_the_operators() {
    let empty = scratch("connect");
    let env = ApiEnv::default();
    let c = connect(&flag("unix:/nowhere/api.sock"), &env, &empty).unwrap();
    assert_eq!(c.endpoint(), &unix("/nowhere/api.sock"));
    assert!(!c.has_tls());
    let e = connect(&flag("127.0.0.1:6780"), &env, &empty).unwrap_err();
    assert!(e.to_string().contains("pass --tls-dir DIR"), "{e}");
    let sel = ApiSelection {
        tls_dir: Some(empty.join("pki")),
        ..flag("127.0.0.1:6780")
    };
    let e = connect(&sel, &env, &empty).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("loading the operator's TLS credentials from "),
        "{e}"
    );
}

//! The deployment files ship a configuration the gateway accepts: the
//! resources inside the DaemonSet's ConfigMap validate with `llmgw validate`.

use std::process::Command;

use llmgw_tests::workspace_bin;

#[test]
fn kubernetes_configmap_holds_a_valid_configuration() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("deploy/kubernetes/llmgw.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files = 0;
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: serde_norway::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "ConfigMap" && v["metadata"]["name"] == "llmgw-config" {
            for (name, body) in v["data"].as_mapping().expect("data") {
                let name = name.as_str().unwrap();
                std::fs::write(dir.path().join(name), body.as_str().unwrap()).unwrap();
                files += 1;
            }
        }
    }
    assert_eq!(files, 3, "the ConfigMap llmgw-config was not found");
    let out = Command::new(workspace_bin("llmgw"))
        .args(["validate", "--config"])
        .arg(dir.path())
        .env("API_KEY", "sk-deploy-test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("rule ingress-route of LLMRoute default/dashscope-route"),
        "{stdout}"
    );
}

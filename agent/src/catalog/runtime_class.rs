//! One RuntimeClass per Shim: its handler, scheduled onto the nodes whose readiness label says the
//! handler is loaded, owned by the Shim (the garbage collector deletes it with the Shim). A
//! RuntimeClass of the same name that is not the Shim's is never touched: the Shim says so instead.

use std::collections::BTreeMap;

use k8s_openapi::api::node::v1::{RuntimeClass, Scheduling};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::status::Problem;
use crate::crd::Shim;
use crate::node_contract::labels::shim_ready_label;

pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kwasm-catalog");

#[derive(Debug, PartialEq)]
pub enum Action {
    Create(RuntimeClass),
    Replace(RuntimeClass),
    Delete(String),
}

/// The RuntimeClass `shim` should have (None: `runtimeClass.create: false`).
pub fn desired(shim: &Shim) -> Option<RuntimeClass> {
    let name = shim.runtime_class_name()?;
    let handler = shim.handler();
    Some(RuntimeClass {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
            owner_references: Some(vec![owner(shim)]),
            ..Default::default()
        },
        handler: handler.clone(),
        scheduling: Some(Scheduling {
            node_selector: Some([(shim_ready_label(&handler), "true".to_owned())].into()),
            tolerations: None,
        }),
        overhead: None,
    })
}

fn owner(shim: &Shim) -> OwnerReference {
    OwnerReference {
        api_version: "kwasm.sh/v1alpha1".into(),
        kind: "Shim".into(),
        name: shim.metadata.name.clone().unwrap_or_default(),
        uid: shim.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn controller_uid(rc: &RuntimeClass) -> Option<&str> {
    rc.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// What to do so every Shim has its RuntimeClass, and the problems to show on Shims whose name is
/// taken. Only differences produce requests.
pub fn plan(
    shims: &[&Shim],
    existing: &[&RuntimeClass],
) -> (Vec<Action>, BTreeMap<String, Problem>) {
    let mut actions = Vec::new();
    let mut problems = BTreeMap::new();
    let by_name: BTreeMap<&str, &RuntimeClass> = existing
        .iter()
        .filter_map(|rc| Some((rc.metadata.name.as_deref()?, *rc)))
        .collect();
    for shim in shims {
        let uid = shim.metadata.uid.as_deref().unwrap_or_default();
        let want = desired(shim);
        let want_name = want.as_ref().and_then(|w| w.metadata.name.clone());
        // Its RuntimeClasses under another name (renamed, or no longer wanted) go.
        for rc in existing {
            let name = rc.metadata.name.clone().unwrap_or_default();
            if controller_uid(rc) == Some(uid) && Some(&name) != want_name.as_ref() {
                actions.push(Action::Delete(name));
            }
        }
        let Some(want) = want else { continue };
        let name = want_name.unwrap_or_default();
        match by_name.get(name.as_str()) {
            None => actions.push(Action::Create(want)),
            Some(have) if controller_uid(have) != Some(uid) => {
                let shim_name = shim.metadata.name.clone().unwrap_or_default();
                problems.insert(
                    shim_name,
                    Problem::RuntimeClassTaken(format!(
                        "RuntimeClass {name} exists and is not this Shim's; delete it (or set spec.runtimeClass.name) for the Shim to keep one"
                    )),
                );
            }
            Some(have) if have.handler != want.handler || have.scheduling != want.scheduling => {
                let mut rc = want;
                rc.metadata.resource_version = have.metadata.resource_version.clone();
                actions.push(Action::Replace(rc));
            }
            Some(_) => {}
        }
    }
    (actions, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shim(name: &str, uid: &str, rc: serde_json::Value) -> Shim {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kwasm.sh/v1alpha1", "kind": "Shim",
            "metadata": {"name": name, "uid": uid},
            "spec": {"runtimeType": "io.containerd.spin.v2", "binary": "containerd-shim-spin-v2",
                     "version": "v1", "platforms": [], "runtimeClass": rc}
        }))
        .unwrap()
    }

    #[test]
    fn each_shim_gets_its_own_and_leaves_others_alone() {
        let spin = shim("spin", "u1", serde_json::json!({"name": "wasm-spin"}));
        let (actions, problems) = plan(&[&spin], &[]);
        let Action::Create(rc) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(rc.handler, "spin");
        assert_eq!(
            rc.scheduling.as_ref().unwrap().node_selector,
            Some([("kwasm.sh/shim.spin".to_owned(), "true".to_owned())].into())
        );
        assert!(problems.is_empty());
        // In step: nothing to do. Another's of the same name: a problem, no request.
        let (actions, _) = plan(&[&spin], &[rc]);
        assert!(actions.is_empty(), "{actions:?}");
        let mut foreign = rc.clone();
        foreign.metadata.owner_references = None;
        let (actions, problems) = plan(&[&spin], &[&foreign]);
        assert!(actions.is_empty());
        assert!(matches!(problems["spin"], Problem::RuntimeClassTaken(_)));
        // Renamed: the old one goes, the new one comes; not wanted: the old one goes.
        let renamed = shim("spin", "u1", serde_json::json!({"name": "spin2"}));
        let (actions, _) = plan(&[&renamed], &[rc]);
        assert_eq!(actions[0], Action::Delete("wasm-spin".into()));
        assert!(
            matches!(&actions[1], Action::Create(r) if r.metadata.name.as_deref() == Some("spin2"))
        );
        let none = shim("spin", "u1", serde_json::json!({"create": false}));
        assert_eq!(
            plan(&[&none], &[rc]).0,
            [Action::Delete("wasm-spin".into())]
        );
    }
}

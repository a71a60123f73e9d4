package main

// Who a request is, and what it may do.
//
// Identity: bearer tokens from a file of JSON lines ({"token","user","uid","groups","extra"}), read
// again whenever it changes, so a test can add an agent's token while the server runs. A
// service-account user with `extra` authentication.kubernetes.io/node-name is what a bound pod token
// gives a DaemonSet pod; the chart's admission policy reads exactly that.
//
// Authorization: RBAC as upstream evaluates it (rules, bindings, subjects; kube-apiserver's
// authorizer lives in k8s.io/kubernetes, which is not packaged, so this is a transcription of its
// evaluation), on the Roles and bindings stored in this server — the chart's own RBAC decides what
// an agent may do. system:masters may do anything, as upstream's privileged group.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	rbaclisters "k8s.io/client-go/listers/rbac/v1"
)

type tokenEntry struct {
	Token  string              `json:"token"`
	User   string              `json:"user"`
	UID    string              `json:"uid"`
	Groups []string            `json:"groups"`
	Extra  map[string][]string `json:"extra"`
}

type tokenFile struct {
	path  string
	mu    sync.Mutex
	mtime time.Time
	size  int64
	users map[string]*user.DefaultInfo
}

func (t *tokenFile) AuthenticateToken(_ context.Context, token string) (*authenticator.Response, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.reload(); err != nil {
		return nil, false, err
	}
	u, ok := t.users[token]
	if !ok {
		return nil, false, nil
	}
	return &authenticator.Response{User: u}, true, nil
}

func (t *tokenFile) reload() error {
	st, err := os.Stat(t.path)
	if err != nil {
		return err
	}
	if st.ModTime().Equal(t.mtime) && st.Size() == t.size && t.users != nil {
		return nil
	}
	f, err := os.Open(t.path)
	if err != nil {
		return err
	}
	defer f.Close()
	users := map[string]*user.DefaultInfo{}
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		line := strings.TrimSpace(lines.Text())
		if line == "" {
			continue
		}
		var e tokenEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			return fmt.Errorf("%s: %v", t.path, err)
		}
		users[e.Token] = &user.DefaultInfo{Name: e.User, UID: e.UID, Groups: e.Groups, Extra: e.Extra}
	}
	t.users, t.mtime, t.size = users, st.ModTime(), st.Size()
	return lines.Err()
}

type rbacAuthorizer struct {
	roles           rbaclisters.RoleLister
	clusterRoles    rbaclisters.ClusterRoleLister
	bindings        rbaclisters.RoleBindingLister
	clusterBindings rbaclisters.ClusterRoleBindingLister
}

func (r rbacAuthorizer) Authorize(_ context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
	u := a.GetUser()
	for _, g := range u.GetGroups() {
		if g == user.SystemPrivilegedGroup {
			return authorizer.DecisionAllow, "", nil
		}
	}
	cbs, err := r.clusterBindings.List(labels.Everything())
	if err != nil {
		return authorizer.DecisionNoOpinion, "", err
	}
	for _, b := range cbs {
		if r.allows(b.Subjects, "", b.RoleRef, "", a) {
			return authorizer.DecisionAllow, "RBAC: allowed by ClusterRoleBinding " + b.Name, nil
		}
	}
	if ns := a.GetNamespace(); ns != "" {
		rbs, err := r.bindings.RoleBindings(ns).List(labels.Everything())
		if err != nil {
			return authorizer.DecisionNoOpinion, "", err
		}
		for _, b := range rbs {
			if r.allows(b.Subjects, ns, b.RoleRef, ns, a) {
				return authorizer.DecisionAllow, "RBAC: allowed by RoleBinding " + ns + "/" + b.Name, nil
			}
		}
	}
	return authorizer.DecisionNoOpinion, "", nil
}

func (r rbacAuthorizer) allows(subjects []rbacv1.Subject, bindingNS string, ref rbacv1.RoleRef, roleNS string, a authorizer.Attributes) bool {
	if !appliesTo(a.GetUser(), subjects, bindingNS) {
		return false
	}
	var rules []rbacv1.PolicyRule
	switch ref.Kind {
	case "ClusterRole":
		if role, err := r.clusterRoles.Get(ref.Name); err == nil {
			rules = role.Rules
		}
	case "Role":
		if role, err := r.roles.Roles(roleNS).Get(ref.Name); err == nil {
			rules = role.Rules
		}
	}
	for i := range rules {
		if ruleAllows(a, &rules[i]) {
			return true
		}
	}
	return false
}

func appliesTo(u user.Info, subjects []rbacv1.Subject, bindingNS string) bool {
	for _, s := range subjects {
		switch s.Kind {
		case rbacv1.UserKind:
			if u.GetName() == s.Name {
				return true
			}
		case rbacv1.GroupKind:
			for _, g := range u.GetGroups() {
				if g == s.Name {
					return true
				}
			}
		case rbacv1.ServiceAccountKind:
			ns := bindingNS
			if s.Namespace != "" {
				ns = s.Namespace
			}
			if u.GetName() == serviceaccount.MakeUsername(ns, s.Name) {
				return true
			}
		}
	}
	return false
}

func ruleAllows(a authorizer.Attributes, rule *rbacv1.PolicyRule) bool {
	if !has(rule.Verbs, a.GetVerb()) {
		return false
	}
	if !a.IsResourceRequest() {
		for _, u := range rule.NonResourceURLs {
			if u == "*" || u == a.GetPath() || (strings.HasSuffix(u, "*") && strings.HasPrefix(a.GetPath(), strings.TrimSuffix(u, "*"))) {
				return true
			}
		}
		return false
	}
	combined := a.GetResource()
	if a.GetSubresource() != "" {
		combined += "/" + a.GetSubresource()
	}
	resourceOK := false
	for _, res := range rule.Resources {
		if res == rbacv1.ResourceAll || res == combined || (a.GetSubresource() != "" && res == "*/"+a.GetSubresource()) {
			resourceOK = true
		}
	}
	return resourceOK && has(rule.APIGroups, a.GetAPIGroup()) &&
		(len(rule.ResourceNames) == 0 || (a.GetName() != "" && has(rule.ResourceNames, a.GetName())))
}

func has(list []string, want string) bool {
	for _, v := range list {
		if v == "*" || v == want {
			return true
		}
	}
	return false
}

// bootstrapPolicy: what kube-apiserver's bootstrap RBAC gives every authenticated user (discovery,
// version, health; its own access reviews), stored as upstream stores it.
func bootstrapPolicy() ([]*rbacv1.ClusterRole, []*rbacv1.ClusterRoleBinding) {
	discovery := &rbacv1.ClusterRole{Rules: []rbacv1.PolicyRule{{Verbs: []string{"get"},
		NonResourceURLs: []string{"/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz",
			"/openapi", "/openapi/*", "/version", "/version/"}}}}
	discovery.Name = "system:discovery"
	basic := &rbacv1.ClusterRole{Rules: []rbacv1.PolicyRule{{Verbs: []string{"create"},
		APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"selfsubjectaccessreviews", "selfsubjectrulesreviews"}}}}
	basic.Name = "system:basic-user"
	var bindings []*rbacv1.ClusterRoleBinding
	for _, role := range []*rbacv1.ClusterRole{discovery, basic} {
		role.Labels = map[string]string{"kubernetes.io/bootstrapping": "rbac-defaults"}
		b := &rbacv1.ClusterRoleBinding{
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: user.AllAuthenticated}},
		}
		b.Name, b.Labels = role.Name, role.Labels
		bindings = append(bindings, b)
	}
	return []*rbacv1.ClusterRole{discovery, basic}, bindings
}

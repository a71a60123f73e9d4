package main

// Defaults the admission plugin relies on: kube-apiserver sets them when a ValidatingAdmissionPolicy
// or its binding is written (pkg/apis/admissionregistration/v1/defaults.go in k8s.io/kubernetes, not
// packaged; transcribed field for field). Without them upstream's plugin refuses to run a policy
// ("a nil namespace selector was passed"). Other types' defaults are not applied here.

import (
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func addDefaults(s *runtime.Scheme) {
	s.AddTypeDefaultingFunc(&admissionregistrationv1.ValidatingAdmissionPolicy{}, func(o interface{}) {
		spec := &o.(*admissionregistrationv1.ValidatingAdmissionPolicy).Spec
		if spec.FailurePolicy == nil {
			fail := admissionregistrationv1.Fail
			spec.FailurePolicy = &fail
		}
		defaultMatch(spec.MatchConstraints)
	})
	s.AddTypeDefaultingFunc(&admissionregistrationv1.ValidatingAdmissionPolicyBinding{}, func(o interface{}) {
		spec := &o.(*admissionregistrationv1.ValidatingAdmissionPolicyBinding).Spec
		defaultMatch(spec.MatchResources)
		if spec.ParamRef != nil && spec.ParamRef.ParameterNotFoundAction == nil {
			deny := admissionregistrationv1.DenyAction
			spec.ParamRef.ParameterNotFoundAction = &deny
		}
	})
}

func defaultMatch(m *admissionregistrationv1.MatchResources) {
	if m == nil {
		return
	}
	if m.MatchPolicy == nil {
		equivalent := admissionregistrationv1.Equivalent
		m.MatchPolicy = &equivalent
	}
	if m.NamespaceSelector == nil {
		m.NamespaceSelector = &metav1.LabelSelector{}
	}
	if m.ObjectSelector == nil {
		m.ObjectSelector = &metav1.LabelSelector{}
	}
	for _, rules := range [][]admissionregistrationv1.NamedRuleWithOperations{m.ResourceRules, m.ExcludeResourceRules} {
		for i := range rules {
			if rules[i].Scope == nil {
				all := admissionregistrationv1.AllScopes
				rules[i].Scope = &all
			}
		}
	}
}

package main

// The built-in resources this server serves, each on upstream's generic registry (etcd3 storage with
// its watch cache). kube-apiserver keeps internal types in k8s.io/kubernetes, which is not packaged;
// here the versioned k8s.io/api types are registered as the internal version too, so a request is
// decoded, stored and watched exactly as upstream's handlers do, with no conversion but for Events.

import (
	"context"
	"fmt"
	"reflect"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	nodev1 "k8s.io/api/node/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/api/validation/path"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/storage/names"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
	// Only the served versions, for OpenAPI's names (an internal version is no API).
	externalScheme = runtime.NewScheme()
)

// resource is one served resource: where it lives, its types, and what upstream's strategy for it
// would let through that a generic one must be told.
type resource struct {
	gv             schema.GroupVersion
	name           string
	obj, list      runtime.Object
	namespaced     bool
	status         bool     // has a status subresource
	createOnUpdate bool     // PUT may create (Leases, Events, RBAC, as upstream)
	generation     bool     // metadata.generation counts spec changes (workloads, policies, pods)
	short          []string // kubectl's short names
	fields         func(runtime.Object) fields.Set
}

var (
	core    = corev1.SchemeGroupVersion
	apps    = appsv1.SchemeGroupVersion
	batch   = batchv1.SchemeGroupVersion
	coord   = coordinationv1.SchemeGroupVersion
	nodeGV  = nodev1.SchemeGroupVersion
	events  = eventsv1.SchemeGroupVersion
	rbac    = rbacv1.SchemeGroupVersion
	admitGV = admissionregistrationv1.SchemeGroupVersion
)

var resources = []resource{
	{gv: core, name: "nodes", obj: &corev1.Node{}, list: &corev1.NodeList{}, status: true, short: []string{"no"},
		fields: func(o runtime.Object) fields.Set {
			return fields.Set{"spec.unschedulable": boolString(o.(*corev1.Node).Spec.Unschedulable)}
		}},
	{gv: core, name: "namespaces", obj: &corev1.Namespace{}, list: &corev1.NamespaceList{}, status: true, short: []string{"ns"},
		fields: func(o runtime.Object) fields.Set {
			return fields.Set{"status.phase": string(o.(*corev1.Namespace).Status.Phase)}
		}},
	{gv: core, generation: true, name: "pods", obj: &corev1.Pod{}, list: &corev1.PodList{}, namespaced: true, status: true, short: []string{"po"},
		fields: func(o runtime.Object) fields.Set {
			p := o.(*corev1.Pod)
			return fields.Set{"spec.nodeName": p.Spec.NodeName, "status.phase": string(p.Status.Phase),
				"spec.serviceAccountName": p.Spec.ServiceAccountName}
		}},
	{gv: core, name: "events", obj: &corev1.Event{}, list: &corev1.EventList{}, namespaced: true, createOnUpdate: true,
		short: []string{"ev"}, fields: eventFields},
	{gv: core, name: "configmaps", obj: &corev1.ConfigMap{}, list: &corev1.ConfigMapList{}, namespaced: true, short: []string{"cm"}},
	{gv: core, name: "secrets", obj: &corev1.Secret{}, list: &corev1.SecretList{}, namespaced: true,
		fields: func(o runtime.Object) fields.Set { return fields.Set{"type": string(o.(*corev1.Secret).Type)} }},
	{gv: core, name: "serviceaccounts", obj: &corev1.ServiceAccount{}, list: &corev1.ServiceAccountList{}, namespaced: true, short: []string{"sa"}},
	{gv: core, name: "services", obj: &corev1.Service{}, list: &corev1.ServiceList{}, namespaced: true, status: true, short: []string{"svc"}},
	{gv: coord, name: "leases", obj: &coordinationv1.Lease{}, list: &coordinationv1.LeaseList{}, namespaced: true, createOnUpdate: true},
	{gv: nodeGV, name: "runtimeclasses", obj: &nodev1.RuntimeClass{}, list: &nodev1.RuntimeClassList{}},
	{gv: apps, generation: true, name: "daemonsets", obj: &appsv1.DaemonSet{}, list: &appsv1.DaemonSetList{}, namespaced: true, status: true, short: []string{"ds"}},
	{gv: apps, generation: true, name: "deployments", obj: &appsv1.Deployment{}, list: &appsv1.DeploymentList{}, namespaced: true, status: true, short: []string{"deploy"}},
	{gv: batch, generation: true, name: "jobs", obj: &batchv1.Job{}, list: &batchv1.JobList{}, namespaced: true, status: true},
	{gv: rbac, name: "clusterroles", obj: &rbacv1.ClusterRole{}, list: &rbacv1.ClusterRoleList{}, createOnUpdate: true},
	{gv: rbac, name: "clusterrolebindings", obj: &rbacv1.ClusterRoleBinding{}, list: &rbacv1.ClusterRoleBindingList{}, createOnUpdate: true},
	{gv: rbac, name: "roles", obj: &rbacv1.Role{}, list: &rbacv1.RoleList{}, namespaced: true, createOnUpdate: true},
	{gv: rbac, name: "rolebindings", obj: &rbacv1.RoleBinding{}, list: &rbacv1.RoleBindingList{}, namespaced: true, createOnUpdate: true},
	{gv: admitGV, generation: true, name: "validatingadmissionpolicies", obj: &admissionregistrationv1.ValidatingAdmissionPolicy{},
		list: &admissionregistrationv1.ValidatingAdmissionPolicyList{}, status: true},
	{gv: admitGV, generation: true, name: "validatingadmissionpolicybindings", obj: &admissionregistrationv1.ValidatingAdmissionPolicyBinding{},
		list: &admissionregistrationv1.ValidatingAdmissionPolicyBindingList{}},
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func init() {
	add := []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme,
		coordinationv1.AddToScheme, nodev1.AddToScheme, eventsv1.AddToScheme, rbacv1.AddToScheme,
		admissionregistrationv1.AddToScheme}
	for _, s := range []*runtime.Scheme{scheme, externalScheme} {
		for _, f := range add {
			must(f(s))
		}
		metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
		s.AddUnversionedTypes(schema.GroupVersion{Group: "", Version: "v1"}, &metav1.Status{},
			&metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
	}
	for _, gv := range []schema.GroupVersion{core, apps, batch, coord, nodeGV, rbac, admitGV} {
		internal := schema.GroupVersion{Group: gv.Group, Version: runtime.APIVersionInternal}
		for kind, t := range scheme.KnownTypes(gv) {
			if !scheme.Recognizes(internal.WithKind(kind)) {
				scheme.AddKnownTypeWithName(internal.WithKind(kind), reflect.New(t).Interface().(runtime.Object))
			}
		}
		must(scheme.SetVersionPriority(gv))
	}
	must(scheme.SetVersionPriority(events))
	must(addEventConversions(scheme))
	addDefaults(scheme)
	for _, r := range resources {
		allowed := fields.Set{"metadata.name": "", "metadata.namespace": ""}
		if r.fields != nil {
			allowed = generic.MergeFieldsSets(allowed, r.fields(r.obj))
		}
		gvk := r.gv.WithKind(reflect.TypeOf(r.obj).Elem().Name())
		must(scheme.AddFieldLabelConversionFunc(gvk, func(label, value string) (string, string, error) {
			if _, ok := allowed[label]; !ok {
				return "", "", fmt.Errorf("field label not supported: %s", label)
			}
			return label, value, nil
		}))
	}
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// strategy is what upstream's per-resource strategies share: object metadata validated as upstream
// validates it (names, labels, annotations, owner references, finalizers), a status subresource
// that writes only status and a main resource that never does, and generation counted on spec
// changes. Upstream's per-type validation lives in k8s.io/kubernetes, which is not packaged.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	r          resource
	statusOnly bool
}

func (s strategy) NamespaceScoped() bool     { return s.r.namespaced }
func (s strategy) AllowCreateOnUpdate() bool { return s.r.createOnUpdate && !s.statusOnly }
func (s strategy) AllowUnconditionalUpdate() bool {
	return true
}
func (s strategy) Canonicalize(runtime.Object)                               {}
func (s strategy) WarningsOnCreate(context.Context, runtime.Object) []string { return nil }
func (s strategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}

func (s strategy) PrepareForCreate(_ context.Context, obj runtime.Object) {
	m, _ := apimeta.Accessor(obj)
	if s.r.generation {
		m.SetGeneration(1)
	}
	nameLabel(s.r, m)
}

// nameLabel: upstream labels every Namespace with its own name (what namespaceSelectors match).
func nameLabel(r resource, m metav1.Object) {
	if r.name == "namespaces" {
		labels := m.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels[corev1.LabelMetadataName] = m.GetName()
		m.SetLabels(labels)
	}
}

func (s strategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	if s.statusOnly {
		copyField(obj, old, "Spec")
		return
	}
	if s.r.status {
		copyField(obj, old, "Status")
	}
	m, _ := apimeta.Accessor(obj)
	nameLabel(s.r, m)
	if !s.r.generation {
		return
	}
	o, _ := apimeta.Accessor(old)
	m.SetGeneration(o.GetGeneration())
	if !reflect.DeepEqual(fieldOf(obj, "Spec").Interface(), fieldOf(old, "Spec").Interface()) {
		m.SetGeneration(o.GetGeneration() + 1)
	}
}

func (s strategy) Validate(_ context.Context, obj runtime.Object) field.ErrorList {
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(field.NewPath("metadata"), err)}
	}
	nameFn := validation.NameIsDNSSubdomain
	if s.r.name == "namespaces" {
		nameFn = validation.ValidateNamespaceName
	} else if s.r.group() == rbac.Group || s.r.name == "events" {
		nameFn = func(name string, prefix bool) []string { return path.IsValidPathSegmentName(name) }
	}
	return validation.ValidateObjectMetaAccessor(m, s.r.namespaced, nameFn, field.NewPath("metadata"))
}

func (s strategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	m, _ := apimeta.Accessor(obj)
	o, _ := apimeta.Accessor(old)
	errs := validation.ValidateObjectMetaAccessorUpdate(m, o, field.NewPath("metadata"))
	return append(errs, s.Validate(ctx, obj)...)
}

// GetResetFields: what server-side apply leaves alone on each endpoint, as upstream says for each.
func (s strategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	if !s.r.status {
		return nil
	}
	reset := fieldpath.NewSet(fieldpath.MakePathOrDie("status"))
	if s.statusOnly {
		reset = fieldpath.NewSet(fieldpath.MakePathOrDie("spec"))
	}
	return map[fieldpath.APIVersion]*fieldpath.Set{fieldpath.APIVersion(s.r.gv.String()): reset}
}

func (r resource) group() string { return r.gv.Group }

func fieldOf(obj runtime.Object, name string) reflect.Value {
	return reflect.ValueOf(obj).Elem().FieldByName(name)
}

func hasField(obj runtime.Object, name string) bool { return fieldOf(obj, name).IsValid() }

func copyField(to, from runtime.Object, name string) {
	if hasField(to, name) {
		fieldOf(to, name).Set(fieldOf(from, name))
	}
}

// withShortNames adds kubectl's short names to a store.
type withShortNames struct {
	*genericregistry.Store
	short []string
}

func (s withShortNames) ShortNames() []string { return s.short }

// statusREST is a resource's /status: get, update and patch, through the status-only strategy.
type statusREST struct{ store *genericregistry.Store }

func (r statusREST) New() runtime.Object { return r.store.New() }
func (r statusREST) Destroy()            {}
func (r statusREST) Get(ctx context.Context, name string, o *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, o)
}
func (r statusREST) Update(ctx context.Context, name string, info rest.UpdatedObjectInfo, cv rest.ValidateObjectFunc,
	uv rest.ValidateObjectUpdateFunc, _ bool, o *metav1.UpdateOptions) (runtime.Object, bool, error) {
	return r.store.Update(ctx, name, info, cv, uv, false, o)
}
func (r statusREST) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return r.store.GetResetFields()
}
func (r statusREST) ConvertToTable(ctx context.Context, obj runtime.Object, o runtime.Object) (*metav1.Table, error) {
	return r.store.ConvertToTable(ctx, obj, o)
}

// newStore builds one resource's storage (and its status subresource's) on the options' etcd.
func newStore(r resource, getter generic.RESTOptionsGetter) (map[string]rest.Storage, error) {
	gr := schema.GroupResource{Group: r.group(), Resource: r.name}
	singular := schema.GroupResource{Group: r.group(), Resource: singularOf(r)}
	main := strategy{ObjectTyper: scheme, NameGenerator: names.SimpleNameGenerator, r: r}
	store := &genericregistry.Store{
		NewFunc:                   func() runtime.Object { return r.obj.DeepCopyObject() },
		NewListFunc:               func() runtime.Object { return r.list.DeepCopyObject() },
		DefaultQualifiedResource:  gr,
		SingularQualifiedResource: singular,
		CreateStrategy:            main,
		UpdateStrategy:            main,
		DeleteStrategy:            main,
		ResetFieldsStrategy:       main,
		TableConvertor:            rest.NewDefaultTableConvertor(gr),
	}
	if r.name == "events" {
		store.TTLFunc = func(runtime.Object, uint64, bool) (uint64, error) { return 3600, nil }
	}
	attrs := func(obj runtime.Object) (labels.Set, fields.Set, error) {
		m, err := apimeta.Accessor(obj)
		if err != nil {
			return nil, nil, err
		}
		set := fields.Set{"metadata.name": m.GetName()}
		if r.namespaced {
			set["metadata.namespace"] = m.GetNamespace()
		}
		if r.fields != nil {
			set = generic.MergeFieldsSets(set, r.fields(obj))
		}
		return m.GetLabels(), set, nil
	}
	if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: getter, AttrFunc: attrs}); err != nil {
		return nil, err
	}
	out := map[string]rest.Storage{r.name: withShortNames{store, r.short}}
	if r.status {
		status := *store
		st := strategy{ObjectTyper: scheme, NameGenerator: names.SimpleNameGenerator, r: r, statusOnly: true}
		status.UpdateStrategy, status.ResetFieldsStrategy = st, st
		out[r.name+"/status"] = statusREST{&status}
	}
	return out, nil
}

func singularOf(r resource) string {
	kind := reflect.TypeOf(r.obj).Elem().Name()
	out := []rune{}
	for _, c := range kind {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		out = append(out, c)
	}
	return string(out)
}

// apiGroups: every served resource installed in its group, events.k8s.io/v1 on the core Events'
// storage (as kube-apiserver serves it: one etcd prefix seen through both groups).
func apiGroups(getter generic.RESTOptionsGetter) (legacy *genericapiserver.APIGroupInfo, groups []*genericapiserver.APIGroupInfo, err error) {
	infos := map[string]*genericapiserver.APIGroupInfo{}
	order := []string{}
	info := func(group string) *genericapiserver.APIGroupInfo {
		if infos[group] == nil {
			i := genericapiserver.NewDefaultAPIGroupInfo(group, scheme, metav1.ParameterCodec, codecs)
			infos[group], order = &i, append(order, group)
		}
		return infos[group]
	}
	for _, r := range resources {
		stores, err := newStore(r, getter)
		if err != nil {
			return nil, nil, err
		}
		i := info(r.group())
		if i.VersionedResourcesStorageMap[r.gv.Version] == nil {
			i.VersionedResourcesStorageMap[r.gv.Version] = map[string]rest.Storage{}
		}
		for name, s := range stores {
			i.VersionedResourcesStorageMap[r.gv.Version][name] = s
		}
		if r.name == "events" {
			again, err := newStore(r, getter)
			if err != nil {
				return nil, nil, err
			}
			info(events.Group).VersionedResourcesStorageMap[events.Version] = map[string]rest.Storage{"events": again["events"]}
		}
	}
	for _, g := range order {
		if g == "" {
			legacy = infos[g]
		} else {
			groups = append(groups, infos[g])
		}
	}
	return legacy, groups, nil
}

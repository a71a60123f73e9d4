package main

// What kube-apiserver's aggregator and its post-start hooks do for the chain, written here: CRD
// groups listed in the legacy /apis document (the aggregator's CRD registration), CRD schemas and
// the apiextensions group in the one OpenAPI the server serves (the aggregator merges its
// delegates' specs), the system namespaces and the bootstrap RBAC every cluster starts with, and
// readiness only once RBAC's informers have synced (or a first request would be refused).

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"

	restful "github.com/emicklei/go-restful/v3"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsv1beta1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1beta1"
	apiextensionsapiserver "k8s.io/apiextensions-apiserver/pkg/apiserver"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/version"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/kube-openapi/pkg/builder3"
	"k8s.io/kube-openapi/pkg/common/restfuladapter"
)

var (
	crdV1      = apiextensionsv1.SchemeGroupVersion
	crdV1beta1 = apiextensionsv1beta1.SchemeGroupVersion
)

// noServices: CRD conversion webhooks would be resolved through Services; no test uses one.
type noServices struct{}

func (noServices) ResolveEndpoint(namespace, name string, port int32) (*url.URL, error) {
	return nil, fmt.Errorf("service %s/%s: this test server resolves no services", namespace, name)
}

func addHooks(server *genericapiserver.GenericAPIServer, crd *apiextensionsapiserver.CustomResourceDefinitions,
	cfg *genericapiserver.RecommendedConfig) error {
	rbacInformers := cfg.SharedInformerFactory.Rbac().V1()
	synced := []cache.InformerSynced{rbacInformers.Roles().Informer().HasSynced, rbacInformers.ClusterRoles().Informer().HasSynced,
		rbacInformers.RoleBindings().Informer().HasSynced, rbacInformers.ClusterRoleBindings().Informer().HasSynced}
	crds := crd.Informers.Apiextensions().V1().CustomResourceDefinitions()
	listed := func() { listCRDGroups(server, crds.Lister()) }
	if _, err := crds.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(interface{}) { listed() }, UpdateFunc: func(_, _ interface{}) { listed() },
		DeleteFunc: func(interface{}) { listed() },
	}); err != nil {
		return err
	}
	hooks := map[string]genericapiserver.PostStartHookFunc{
		"kwasm-bootstrap": func(ctx genericapiserver.PostStartHookContext) error {
			client, err := kubernetes.NewForConfig(ctx.LoopbackClientConfig)
			if err != nil {
				return err
			}
			if err := bootstrap(ctx, client); err != nil {
				return err
			}
			if !cache.WaitForCacheSync(ctx.Done(), synced...) {
				return fmt.Errorf("RBAC informers never synced")
			}
			return nil
		},
		"kwasm-garbage-collector": func(ctx genericapiserver.PostStartHookContext) error {
			go runCollector(ctx, ctx.LoopbackClientConfig)
			return nil
		},
	}
	for name, hook := range hooks {
		if err := server.AddPostStartHook(name, hook); err != nil {
			return err
		}
	}
	return nil
}

// bootstrap: what a new cluster holds before anyone writes (kube-apiserver's system namespaces
// controller and RBAC bootstrap).
func bootstrap(ctx context.Context, client kubernetes.Interface) error {
	for _, ns := range []string{"default", "kube-system", "kube-public", "kube-node-lease"} {
		_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	roles, bindings := bootstrapPolicy()
	for _, r := range roles {
		if _, err := client.RbacV1().ClusterRoles().Create(ctx, r, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	for _, b := range bindings {
		if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

// listCRDGroups puts every CRD group, with its served versions in Kubernetes' order, in /apis.
func listCRDGroups(server *genericapiserver.GenericAPIServer, lister interface {
	List(labels.Selector) ([]*apiextensionsv1.CustomResourceDefinition, error)
}) {
	all, err := lister.List(labels.Everything())
	if err != nil {
		return
	}
	versions := map[string]map[string]bool{}
	for _, c := range all {
		if versions[c.Spec.Group] == nil {
			versions[c.Spec.Group] = map[string]bool{}
		}
		for _, v := range c.Spec.Versions {
			if v.Served {
				versions[c.Spec.Group][v.Name] = true
			}
		}
	}
	for g := range listedCRDGroups {
		if len(versions[g]) == 0 {
			server.DiscoveryGroupManager.RemoveGroup(g)
			delete(listedCRDGroups, g)
		}
	}
	for g, vs := range versions {
		if len(vs) == 0 {
			continue
		}
		group := metav1.APIGroup{Name: g}
		for v := range vs {
			group.Versions = append(group.Versions, metav1.GroupVersionForDiscovery{GroupVersion: g + "/" + v, Version: v})
		}
		sort.Slice(group.Versions, func(i, j int) bool {
			return version.CompareKubeAwareVersionStrings(group.Versions[i].Version, group.Versions[j].Version) > 0
		})
		group.PreferredVersion = group.Versions[0]
		server.DiscoveryGroupManager.AddGroup(group)
		listedCRDGroups[g] = true
	}
}

var listedCRDGroups = map[string]bool{}

// shareOpenAPI: after PrepareRun, the CRD server's OpenAPI controllers publish into the built-in
// server's spec (v2) and service (v3), and the apiextensions group's own routes join v3.
func shareOpenAPI(server *genericapiserver.GenericAPIServer, crd *apiextensionsapiserver.CustomResourceDefinitions,
	cfg *genericapiserver.RecommendedConfig) {
	c := crd.GenericAPIServer
	c.StaticOpenAPISpec, c.OpenAPIVersionedService, c.OpenAPIV3VersionedService =
		server.StaticOpenAPISpec, server.OpenAPIVersionedService, server.OpenAPIV3VersionedService
	for _, ws := range c.Handler.GoRestfulContainer.RegisteredWebServices() {
		gv := strings.TrimPrefix(ws.RootPath(), "/")
		if !strings.HasPrefix(gv, "apis/"+crdV1.Group+"/") {
			continue
		}
		spec, err := builder3.BuildOpenAPISpecFromRoutes(restfuladapter.AdaptWebServices([]*restful.WebService{ws}), cfg.OpenAPIV3Config)
		if err == nil {
			server.OpenAPIV3VersionedService.UpdateGroupVersion(gv, spec)
		}
	}
}

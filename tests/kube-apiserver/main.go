// kube-apiserver for kwasm-agent's tests: a Kubernetes API server composed from Kubernetes' own
// server libraries (Debian's golang-k8s-apiserver-dev and golang-k8s-apiextensions-apiserver-dev,
// 1.36), as cmd/kube-apiserver composes them, because kube-apiserver itself is not packaged.
//
// What is upstream: the generic API server (handlers, discovery, OpenAPI v2/v3, server-side apply,
// field validation, watch, audit, metrics, loopback client, health), the generic registry on etcd3
// storage with its watch cache (one store per resource below), admission with upstream's
// NamespaceLifecycle and ValidatingAdmissionPolicy plugins, and the whole CRD server
// (structural schemas, CEL rules, status subresource, printer columns) in the delegation chain
// behind the built-in resources, as kube-apiserver chains it.
//
// What is written here, each in its own file and said so there: the table of served resources and
// their generic strategy (resources.go; upstream's per-type validation is in k8s.io/kubernetes),
// the events.k8s.io/v1 conversion (events.go), bearer tokens and RBAC evaluation (access.go), the
// CRD groups in legacy discovery and in OpenAPI (chain.go; kube-apiserver's aggregator does that),
// and the garbage collector (collector.go; kube-controller-manager's job).
//
// Usage: kube-apiserver --etcd-servers URL --secure-port N --cert-dir DIR --token-file FILE
//
//	[--audit-log-path FILE] [--min-request-timeout SECONDS]. It prints "PORT n" once it listens; the CA that signed its
//	certificate is DIR/apiserver.crt's last certificate.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	noopoteltrace "go.opentelemetry.io/otel/trace/noop"
	apiextensionsapiserver "k8s.io/apiextensions-apiserver/pkg/apiserver"
	apiextensionsoptions "k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	apiextensionsopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission/plugin/policy/mutating"
	mutatingwebhook "k8s.io/apiserver/pkg/admission/plugin/webhook/mutating"
	validatingwebhook "k8s.io/apiserver/pkg/admission/plugin/webhook/validating"
	"k8s.io/apiserver/pkg/authentication/group"
	"k8s.io/apiserver/pkg/authentication/request/bearertoken"
	discoveryendpoint "k8s.io/apiserver/pkg/endpoints/discovery/aggregated"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	serverstorage "k8s.io/apiserver/pkg/server/storage"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/kube-openapi/pkg/common"

	kubeopenapi "kwasm.test/kube-apiserver/openapi"
)

type flags struct {
	etcd, certDir, tokens, auditLog string
	port, minRequestTimeout         int
}

func main() {
	var f flags
	klog.InitFlags(nil)
	flag.StringVar(&f.etcd, "etcd-servers", "", "etcd client URLs, comma-separated")
	flag.IntVar(&f.port, "secure-port", 0, "port on 127.0.0.1 (0: any free one)")
	flag.StringVar(&f.certDir, "cert-dir", "", "where the self-signed serving certificate is kept")
	flag.StringVar(&f.tokens, "token-file", "", "bearer tokens, one JSON object a line")
	flag.StringVar(&f.auditLog, "audit-log-path", "", "audit log (JSON lines), one event per request")
	flag.IntVar(&f.minRequestTimeout, "min-request-timeout", 1800, "a watch lasts this many seconds or up to twice that")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "kube-apiserver:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, f flags) error {
	cfg, etcd, err := kubeConfig(f)
	if err != nil {
		return err
	}
	crdConfig, err := extensionsConfig(cfg, *etcd)
	if err != nil {
		return err
	}
	crd, err := crdConfig.Complete().New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	server, err := cfg.Complete().New("kube-apiserver", crd.GenericAPIServer)
	if err != nil {
		return err
	}
	legacy, groups, err := apiGroups(cfg.RESTOptionsGetter)
	if err != nil {
		return err
	}
	if err := server.InstallLegacyAPIGroup("/api", legacy); err != nil {
		return err
	}
	if err := server.InstallAPIGroups(groups...); err != nil {
		return err
	}
	if err := addHooks(server, crd, cfg); err != nil {
		return err
	}
	prepared := server.PrepareRun()
	shareOpenAPI(server, crd, cfg)
	fmt.Printf("PORT %d\n", cfg.SecureServing.Listener.Addr().(*net.TCPAddr).Port)
	return prepared.RunWithContext(ctx)
}

// kubeConfig: the built-in resources' server, configured as kube-apiserver configures its own.
func kubeConfig(f flags) (*genericapiserver.RecommendedConfig, *genericoptions.EtcdOptions, error) {
	cfg := genericapiserver.NewRecommendedConfig(codecs)
	run := genericoptions.NewServerRunOptions()
	run.MinRequestTimeout = f.minRequestTimeout
	if err := run.ApplyTo(&cfg.Config); err != nil {
		return nil, nil, err
	}
	secure := genericoptions.NewSecureServingOptions().WithLoopback()
	secure.BindAddress, secure.BindPort = net.ParseIP("127.0.0.1"), f.port
	secure.ServerCert.CertDirectory, secure.ServerCert.PairName = f.certDir, "apiserver"
	loopback := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	if err := secure.MaybeDefaultWithSelfSignedCerts("localhost", nil, loopback); err != nil {
		return nil, nil, err
	}
	if err := secure.ApplyTo(&cfg.SecureServing, &cfg.LoopbackClientConfig); err != nil {
		return nil, nil, err
	}
	client, err := kubernetes.NewForConfig(cfg.LoopbackClientConfig)
	if err != nil {
		return nil, nil, err
	}
	cfg.SharedInformerFactory = informers.NewSharedInformerFactory(client, 10*time.Minute)
	rbacInformers := cfg.SharedInformerFactory.Rbac().V1()
	cfg.Authentication.Authenticator = group.NewAuthenticatedGroupAdder(bearertoken.New(&tokenFile{path: f.tokens}))
	cfg.Authorization.Authorizer = rbacAuthorizer{
		roles: rbacInformers.Roles().Lister(), clusterRoles: rbacInformers.ClusterRoles().Lister(),
		bindings: rbacInformers.RoleBindings().Lister(), clusterBindings: rbacInformers.ClusterRoleBindings().Lister(),
	}
	genericapiserver.AuthorizeClientBearerToken(cfg.LoopbackClientConfig, &cfg.Authentication, &cfg.Authorization)

	etcd := genericoptions.NewEtcdOptions(storagebackend.NewDefaultConfig("/registry", nil))
	etcd.StorageConfig.Transport.ServerList = strings.Split(f.etcd, ",")
	etcd.DefaultStorageMediaType = runtime.ContentTypeProtobuf
	served := serverstorage.NewResourceConfig()
	served.EnableVersions(core, apps, batch, coord, nodeGV, events, rbac, admitGV)
	cfg.MergedResourceConfig = served
	storage := serverstorage.NewDefaultStorageFactory(etcd.StorageConfig, etcd.DefaultStorageMediaType, codecs,
		serverstorage.NewDefaultResourceEncodingConfigForEffectiveVersion(scheme, cfg.EffectiveVersion), served, nil)
	if err := etcd.ApplyWithStorageFactoryTo(storage, &cfg.Config); err != nil {
		return nil, nil, err
	}
	if err := audit(f, &cfg.Config); err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg.LoopbackClientConfig)
	if err != nil {
		return nil, nil, err
	}
	admission := genericoptions.NewAdmissionOptions()
	// Webhooks call out of the cluster and no test registers one; MutatingAdmissionPolicy is beta.
	admission.DisablePlugins = []string{mutatingwebhook.PluginName, validatingwebhook.PluginName, mutating.PluginName}
	if err := admission.ApplyTo(&cfg.Config, cfg.SharedInformerFactory, client, dyn, cfg.FeatureGate, cfg.EffectiveVersion); err != nil {
		return nil, nil, err
	}
	namer := openapinamer.NewDefinitionNamer(externalScheme, apiextensionsapiserver.Scheme)
	cfg.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(definitions, namer)
	cfg.OpenAPIConfig.Info.Title, cfg.OpenAPIConfig.Info.Version = "Kubernetes", cfg.EffectiveVersion.BinaryVersion().String()
	cfg.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(definitions, namer)
	cfg.OpenAPIV3Config.Info.Title, cfg.OpenAPIV3Config.Info.Version = "Kubernetes", cfg.OpenAPIConfig.Info.Version
	// One aggregated discovery document for both servers, as the aggregator serves one.
	cfg.AggregatedDiscoveryGroupManager = discoveryendpoint.NewResourceManager("apis")
	return cfg, etcd, nil
}

// definitions: the OpenAPI of k8s.io/api's served groups (generated from the packaged sources by
// kube-openapi's openapi-gen at build time) and of apiextensions' types (generated upstream).
func definitions(ref common.ReferenceCallback) map[string]common.OpenAPIDefinition {
	defs := kubeopenapi.GetOpenAPIDefinitions(ref)
	for name, def := range apiextensionsopenapi.GetOpenAPIDefinitions(ref) {
		defs[name] = def
	}
	return defs
}

func audit(f flags, cfg *genericapiserver.Config) error {
	if f.auditLog == "" {
		return nil
	}
	policy := f.certDir + "/audit-policy.yaml"
	// Kubelets (system:nodes) write all the time and nothing asks what they did: left out.
	doc := "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n" +
		"- level: None\n  userGroups: [system:nodes]\n- level: Metadata\n"
	if err := os.WriteFile(policy, []byte(doc), 0o600); err != nil {
		return err
	}
	o := genericoptions.NewAuditOptions()
	o.PolicyFile, o.LogOptions.Path, o.LogOptions.Format = policy, f.auditLog, "json"
	return o.ApplyTo(cfg)
}

// extensionsConfig: the CRD server's configuration, made from the built-in server's as
// kube-apiserver's CreateAPIExtensionsConfig makes it (same admission, authn and authz).
func extensionsConfig(kube *genericapiserver.RecommendedConfig, etcd genericoptions.EtcdOptions) (*apiextensionsapiserver.Config, error) {
	generic := kube.Config
	generic.PostStartHooks = map[string]genericapiserver.PostStartHookConfigEntry{}
	generic.RESTOptionsGetter = nil
	etcd.StorageConfig.Codec = apiextensionsapiserver.Codecs.LegacyCodec(crdV1beta1, crdV1)
	etcd.StorageConfig.EncodeVersioner = runtime.NewMultiGroupVersioner(crdV1beta1, schema.GroupKind{Group: crdV1beta1.Group})
	etcd.SkipHealthEndpoints = true
	if err := etcd.ApplyTo(&generic); err != nil {
		return nil, err
	}
	generic.MergedResourceConfig = apiextensionsapiserver.DefaultAPIResourceConfigSource()
	// The built-in server serves OpenAPI for both; the CRD server's controllers publish into it.
	generic.SkipOpenAPIInstallation = true
	return &apiextensionsapiserver.Config{
		GenericConfig: &genericapiserver.RecommendedConfig{Config: generic, SharedInformerFactory: kube.SharedInformerFactory},
		ExtraConfig: apiextensionsapiserver.ExtraConfig{
			CRDRESTOptionsGetter: apiextensionsoptions.NewCRDRESTOptionsGetter(etcd, generic.ResourceTransformers, generic.StorageObjectCountTracker),
			ServiceResolver:      noServices{},
			AuthResolverWrapper:  webhook.NewDefaultAuthenticationInfoResolverWrapper(nil, nil, kube.LoopbackClientConfig, noopoteltrace.NewTracerProvider()),
		},
	}, nil
}

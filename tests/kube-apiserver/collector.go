package main

// The garbage collector: NOT upstream. kube-controller-manager deletes an object whose every owner
// (metadata.ownerReferences) is gone; it is not packaged, and an API server alone never does it, so
// this small collector plays that part: metadata-only informers on every listable resource (CRDs'
// too, found again as they appear), an owner-UID index, and, for a dependent whose owners all
// answer 404 or carry another UID on a live GET, a delete with the dependent's UID as
// precondition and background propagation — the default a cluster applies.

import (
	"context"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

type dependent struct {
	gvr       schema.GroupVersionResource
	namespace string
	name      string
}

type collector struct {
	meta     metadata.Interface
	disc     discovery.DiscoveryInterface
	mapper   *restmapper.DeferredDiscoveryRESTMapper
	mu       sync.RWMutex // watching: written by discover, read by the informers' handlers
	watching map[schema.GroupVersionResource]cache.SharedIndexInformer
	queue    workqueue.TypedRateLimitingInterface[dependent]
}

const ownerIndex = "owner-uid"

func runCollector(ctx context.Context, config *rest.Config) {
	disc := discovery.NewDiscoveryClientForConfigOrDie(config)
	c := &collector{
		meta:     metadata.NewForConfigOrDie(config),
		disc:     disc,
		mapper:   restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc)),
		watching: map[schema.GroupVersionResource]cache.SharedIndexInformer{},
		queue:    workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[dependent]()),
	}
	go wait.UntilWithContext(ctx, c.worker, time.Second)
	// New resources (a CRD just created) are found as a real collector finds them: by discovery again.
	wait.UntilWithContext(ctx, c.discover, time.Second)
	c.queue.ShutDown()
}

func (c *collector) discover(ctx context.Context) {
	lists, err := discovery.ServerPreferredResources(c.disc)
	if err != nil && len(lists) == 0 {
		return
	}
	found := false
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, gvr := range listableAndDeletable(lists) {
		if c.watching[gvr] != nil {
			continue
		}
		found = true
		gvr := gvr
		inf := metadatainformer.NewFilteredMetadataInformer(c.meta, gvr, "", 0,
			cache.Indexers{ownerIndex: ownerUIDs}, nil).Informer()
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj interface{}) { c.enqueueIfOwned(gvr, obj) },
			UpdateFunc: func(_, obj interface{}) { c.enqueueIfOwned(gvr, obj) },
			DeleteFunc: c.ownerGone,
		})
		c.watching[gvr] = inf
		go inf.Run(ctx.Done())
	}
	if found {
		c.mapper.Reset()
	}
}

func listableAndDeletable(lists []*metav1.APIResourceList) []schema.GroupVersionResource {
	var out []schema.GroupVersionResource
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			continue
		}
		for _, r := range l.APIResources {
			verbs := map[string]bool{}
			for _, v := range r.Verbs {
				verbs[v] = true
			}
			if verbs["list"] && verbs["watch"] && verbs["delete"] {
				out = append(out, gv.WithResource(r.Name))
			}
		}
	}
	return out
}

func ownerUIDs(obj interface{}) ([]string, error) {
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return nil, err
	}
	var uids []string
	for _, o := range m.GetOwnerReferences() {
		uids = append(uids, string(o.UID))
	}
	return uids, nil
}

func (c *collector) enqueueIfOwned(gvr schema.GroupVersionResource, obj interface{}) {
	if m, err := apimeta.Accessor(obj); err == nil && len(m.GetOwnerReferences()) > 0 {
		c.queue.Add(dependent{gvr, m.GetNamespace(), m.GetName()})
	}
}

func (c *collector) ownerGone(obj interface{}) {
	if gone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = gone.Obj
	}
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for gvr, inf := range c.watching {
		deps, _ := inf.GetIndexer().ByIndex(ownerIndex, string(m.GetUID()))
		for _, d := range deps {
			c.enqueueIfOwned(gvr, d)
		}
	}
}

func (c *collector) worker(ctx context.Context) {
	for {
		d, quit := c.queue.Get()
		if quit {
			return
		}
		if err := c.collect(ctx, d); err != nil {
			klog.Infof("garbage collector: %v/%s/%s: %v", d.gvr, d.namespace, d.name, err)
			c.queue.AddRateLimited(d)
		} else {
			c.queue.Forget(d)
		}
		c.queue.Done(d)
	}
}

// collect deletes the dependent if none of its owners is alive, asking the server, not a cache.
func (c *collector) collect(ctx context.Context, d dependent) error {
	obj, err := c.meta.Resource(d.gvr).Namespace(d.namespace).Get(ctx, d.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		return err
	}
	for _, owner := range obj.OwnerReferences {
		alive, err := c.alive(ctx, owner, d.namespace)
		if err != nil || alive {
			return err
		}
	}
	uid := obj.UID
	background := metav1.DeletePropagationBackground
	err = c.meta.Resource(d.gvr).Namespace(d.namespace).Delete(ctx, d.name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid}, PropagationPolicy: &background})
	if err == nil {
		klog.Infof("garbage collector: deleted %v %s/%s: its owners are gone", d.gvr, d.namespace, d.name)
	}
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

func (c *collector) alive(ctx context.Context, owner metav1.OwnerReference, namespace string) (bool, error) {
	gv, err := schema.ParseGroupVersion(owner.APIVersion)
	if err != nil {
		return true, nil // an owner we cannot name is never taken for gone, as upstream
	}
	mapping, err := c.mapper.RESTMapping(gv.WithKind(owner.Kind).GroupKind(), gv.Version)
	if err != nil {
		c.mapper.Reset()
		return true, err
	}
	if mapping.Scope.Name() == apimeta.RESTScopeNameRoot {
		namespace = ""
	}
	live, err := c.meta.Resource(mapping.Resource).Namespace(namespace).Get(ctx, owner.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	} else if err != nil {
		return true, err
	}
	return live.UID == owner.UID, nil
}

// kindnet-libcni-driver runs CNI plugins through libcni, the library that
// containerd, cri-o and podman use, so that a plugin is exercised the way a
// container runtime exercises it: the conflist is loaded and its cniVersion
// chosen by libcni, the chain is run with prevResult, results are cached and
// read back for CHECK and DEL, and libcni validates and converts every result.
//
// Usage:
//
//	kindnet-libcni-driver add     CONFLIST NETNS CONTAINERID [IFNAME]  prints the result (JSON)
//	kindnet-libcni-driver check   CONFLIST NETNS CONTAINERID [IFNAME]  prints "CHECK ok"
//	kindnet-libcni-driver del     CONFLIST NETNS CONTAINERID [IFNAME]  prints "DEL ok"; NETNS may be "" or "-"
//	kindnet-libcni-driver status  CONFLIST                             prints "STATUS ok"
//	kindnet-libcni-driver gc      CONFLIST [CONTAINERID[/IFNAME]]...   the arguments are the valid
//	        attachments; prints one JSON line {"deleted":[...],"delVersion":V,"gc":BOOL}
//	kindnet-libcni-driver version PLUGINTYPE   the versions the plugin reports (space-separated)
//	kindnet-libcni-driver version CONFLIST     one JSON line: the cniVersion libcni picked for it
//	kindnet-libcni-driver bench   CONFLIST PODS PARALLEL   pod churn: PODS fresh network namespaces,
//	        ADD all, CHECK all, DEL all, PARALLEL at a time; one JSON line with wall time and
//	        latency percentiles (ms) per phase and an error count; exit 1 on any error or
//	        duplicate address.
//
// IFNAME defaults to eth0. A failed command prints its error on stderr and,
// when the plugin returned a CNI error object, that object on stdout; exit 1.
//
// Environment:
//
//	CNI_PATH         plugin directories, ':'-separated
//	CNI_CACHE_DIR    libcni's cache (default /tmp/kindnet-libcni-driver-cache, not
//	                 libcni's /var/lib/cni, which belongs to the machine's runtime)
//	PORTMAP          JSON list for the portMappings capability, e.g.
//	                 [{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]
//	CAPABILITY_ARGS  JSON object of further capability arguments, e.g.
//	                 {"bandwidth":{"ingressRate":1000000}}
//	K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID   the pod in CNI_ARGS (defaults:
//	                 default, the container ID, a UID derived from the container ID)
//
// CNI_ARGS is what containerd sends: IgnoreUnknown=1;K8S_POD_NAMESPACE=..;
// K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=<container ID>;K8S_POD_UID=..
//
// Debian's libcni (1.1.2) implements spec 1.0.0: it has no STATUS and GC
// (spec 1.1.0), and it reads only "cniVersion", not "cniVersions". status
// and gc are therefore built here on libcni's plugin invocation, as newer
// libcni builds them: the plugins get the list's name and cniVersion (and,
// for GC, cni.dev/valid-attachments), and a list older than 1.1.0 gets no
// STATUS or GC at all; gc first sends DEL for every attachment in libcni's
// cache for this network that is not valid (with cniVersion 1.0.0 when the
// list's is newer: this libcni cannot decode newer cached results).
package main

import (
	"net"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/ioutil"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// libcniPackage is the Debian package version of the libcni sources this was
// built from (set by build.sh).
var libcniPackage = "unknown"

const usage = `usage: kindnet-libcni-driver
  add|check|del CONFLIST NETNS CONTAINERID [IFNAME]
  status CONFLIST
  gc CONFLIST [CONTAINERID[/IFNAME]]...
  version PLUGINTYPE|CONFLIST
  bench CONFLIST PODS PARALLEL`

func fatalf(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "kindnet-libcni-driver: "+format+"\n", a...)
	os.Exit(1)
}

// failed reports a failed CNI operation and exits: the message on stderr,
// and the plugin's CNI error object, if there is one, on stdout.
func failed(op string, err error) {
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		if b, e := json.Marshal(cniErr); e == nil {
			fmt.Println(string(b))
		}
	}
	fatalf("%s: %v", op, err)
}

// driver is one libcni configuration and the exec it shares with the
// invocations libcni has no call for (STATUS, GC).
type driver struct {
	cni      *libcni.CNIConfig
	exec     invoke.Exec
	path     []string
	cacheDir string
}

func newDriver() *driver {
	var path []string
	for _, p := range filepath.SplitList(os.Getenv("CNI_PATH")) {
		if p != "" {
			path = append(path, p)
		}
	}
	ex := &invoke.DefaultExec{
		RawExec:       &invoke.RawExec{Stderr: os.Stderr},
		PluginDecoder: version.PluginDecoder{},
	}
	cache := os.Getenv("CNI_CACHE_DIR")
	if cache == "" {
		cache = "/tmp/kindnet-libcni-driver-cache"
	}
	return &driver{
		cni:      libcni.NewCNIConfigWithCacheDir(path, cache, ex),
		exec:     ex,
		path:     path,
		cacheDir: cache,
	}
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// podUID is a stable UUID-shaped identifier for a container ID.
func podUID(id string) string {
	h := sha256.Sum256([]byte("kindnet-libcni-driver/" + id))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// capabilityArgs reads PORTMAP and CAPABILITY_ARGS once.
var capabilityArgs = func() func() map[string]interface{} {
	var once sync.Once
	var caps map[string]interface{}
	return func() map[string]interface{} {
		once.Do(func() {
			caps = map[string]interface{}{}
			if s := os.Getenv("CAPABILITY_ARGS"); s != "" {
				if err := json.Unmarshal([]byte(s), &caps); err != nil {
					fatalf("CAPABILITY_ARGS is not a JSON object: %v", err)
				}
			}
			if s := os.Getenv("PORTMAP"); s != "" {
				var pm interface{}
				if err := json.Unmarshal([]byte(s), &pm); err != nil {
					fatalf("PORTMAP is not JSON: %v", err)
				}
				caps["portMappings"] = pm
			}
		})
		return caps
	}
}()

// runtimeConf is what a runtime passes for one attachment: the container,
// its namespace and interface, containerd's CNI_ARGS and the capability
// arguments (libcni passes each only to plugins that declare it).
func runtimeConf(netns, id, ifname string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netns,
		IfName:      ifname,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", envOr("K8S_POD_NAMESPACE", "default")},
			{"K8S_POD_NAME", envOr("K8S_POD_NAME", id)},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", envOr("K8S_POD_UID", podUID(id))},
		},
		CapabilityArgs: capabilityArgs(),
	}
}

func loadList(file string) *libcni.NetworkConfigList {
	list, err := libcni.ConfListFromFile(file)
	if err != nil {
		fatalf("%v", err)
	}
	return list
}

func atLeast(v, min string) bool {
	ok, err := version.GreaterThanOrEqualTo(v, min)
	return err == nil && ok
}

// perPlugin runs one command that carries no runtime arguments (STATUS, GC)
// on every plugin of the list, with the list's name and cniVersion and the
// extra keys injected into each plugin's configuration.
func (d *driver) perPlugin(ctx context.Context, list *libcni.NetworkConfigList, command string, extra map[string]interface{}) error {
	inject := map[string]interface{}{"name": list.Name, "cniVersion": list.CNIVersion}
	for k, v := range extra {
		inject[k] = v
	}
	args := &invoke.Args{Command: command, Path: strings.Join(d.path, string(os.PathListSeparator))}
	var errs []string
	for _, plugin := range list.Plugins {
		conf, err := libcni.InjectConf(plugin, inject)
		if err == nil {
			var bin string
			if bin, err = d.exec.FindInPath(plugin.Network.Type, d.path); err == nil {
				err = invoke.ExecPluginWithoutResult(ctx, bin, conf.Bytes, args, d.exec)
			}
		}
		if err != nil {
			err = fmt.Errorf("plugin type=%q failed (%s): %w", plugin.Network.Type, strings.ToLower(command), err)
			if command == "STATUS" {
				return err // the first plugin that is not ready answers for the list
			}
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

type attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// cachedAttachments lists libcni's cache entries of the network `name`.
func (d *driver) cachedAttachments(name string) ([]libcni.RuntimeConf, error) {
	dir := filepath.Join(d.cacheDir, "results")
	entries, err := ioutil.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []libcni.RuntimeConf
	for _, e := range entries {
		if !e.Mode().IsRegular() || !strings.HasPrefix(e.Name(), name+"-") {
			continue
		}
		b, err := ioutil.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var c struct {
			Kind           string                 `json:"kind"`
			ContainerID    string                 `json:"containerId"`
			IfName         string                 `json:"ifName"`
			NetworkName    string                 `json:"networkName"`
			CniArgs        [][2]string            `json:"cniArgs"`
			CapabilityArgs map[string]interface{} `json:"capabilityArgs"`
		}
		if json.Unmarshal(b, &c) != nil || c.Kind != libcni.CNICacheV1 || c.NetworkName != name {
			continue
		}
		out = append(out, libcni.RuntimeConf{
			ContainerID: c.ContainerID, IfName: c.IfName,
			Args: c.CniArgs, CapabilityArgs: c.CapabilityArgs,
		})
	}
	return out, nil
}

// gc deletes every cached attachment of the network that is not valid, then
// (cniVersion 1.1.0 and later) sends GC with cni.dev/valid-attachments.
func (d *driver) gc(ctx context.Context, list *libcni.NetworkConfigList, valid []attachment) {
	keep := map[attachment]bool{}
	for _, a := range valid {
		keep[a] = true
	}
	cached, err := d.cachedAttachments(list.Name)
	if err != nil {
		fatalf("GC: reading libcni's cache: %v", err)
	}
	// Debian's libcni cannot decode results newer than it knows (1.1.0):
	// the DEL of stale attachments then goes with the newest it does.
	del := list
	if !supports(list.CNIVersion) {
		lowered := *list
		lowered.CNIVersion = version.Current()
		del = &lowered
	}
	deleted := []attachment{}
	var errs []string
	for i := range cached {
		rt := cached[i]
		a := attachment{rt.ContainerID, rt.IfName}
		if keep[a] {
			continue
		}
		// The namespace is gone or no longer ours to know: DEL without it.
		if err := d.cni.DelNetworkList(ctx, del, &rt); err != nil {
			errs = append(errs, fmt.Sprintf("DEL of stale %s/%s: %v", a.ContainerID, a.IfName, err))
			continue
		}
		deleted = append(deleted, a)
	}
	sent := atLeast(list.CNIVersion, "1.1.0")
	if sent {
		if valid == nil {
			valid = []attachment{}
		}
		if err := d.perPlugin(ctx, list, "GC", map[string]interface{}{"cni.dev/valid-attachments": valid}); err != nil {
			errs = append(errs, err.Error())
		}
	}
	b, _ := json.Marshal(map[string]interface{}{"deleted": deleted, "delVersion": del.CNIVersion, "gc": sent})
	fmt.Println(string(b))
	if len(errs) > 0 {
		fatalf("GC: %s", strings.Join(errs, "; "))
	}
}

// versionOf prints the cniVersion libcni picked for a conflist, what the file
// offers, and whether this libcni can run it.
func versionOf(file string) {
	list := loadList(file)
	var raw struct {
		CNIVersions []string `json:"cniVersions"`
	}
	_ = json.Unmarshal(list.Bytes, &raw)
	if raw.CNIVersions == nil {
		raw.CNIVersions = []string{}
	}
	out := map[string]interface{}{
		"cniVersion":       list.CNIVersion,
		"offered":          raw.CNIVersions,
		"supported":        supports(list.CNIVersion),
		"libcni":           libcniPackage,
		"libcniSpec":       version.Current(),
		"libcniSupports":   version.All.SupportedVersions(),
		"readsCniVersions": false,
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}

// supports tells whether this libcni can run (and decode results of) a version.
func supports(v string) bool {
	for _, s := range version.All.SupportedVersions() {
		if s == v {
			return true
		}
	}
	return false
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

func main() {
	if len(os.Args) < 3 {
		fatalf("%s", usage)
	}
	d := newDriver()
	ctx := context.Background()
	cmd, file := os.Args[1], os.Args[2]
	switch cmd {
	case "version":
		if strings.Contains(file, "/") || isFile(file) {
			versionOf(file)
			return
		}
		info, err := d.cni.GetVersionInfo(ctx, file)
		if err != nil {
			failed("VERSION", err)
		}
		fmt.Println(strings.Join(info.SupportedVersions(), " "))
	case "add", "check", "del":
		if len(os.Args) < 5 || len(os.Args) > 6 {
			fatalf("%s", usage)
		}
		list := loadList(file)
		netns, id, ifname := os.Args[3], os.Args[4], "eth0"
		if netns == "-" {
			netns = ""
		}
		if len(os.Args) == 6 {
			ifname = os.Args[5]
		}
		rt := runtimeConf(netns, id, ifname)
		switch cmd {
		case "add":
			res, err := d.cni.AddNetworkList(ctx, list, rt)
			if err != nil {
				failed("ADD", err)
			}
			b, err := json.MarshalIndent(res, "", "  ")
			if err != nil {
				fatalf("ADD: result: %v", err)
			}
			fmt.Println(string(b))
		case "check":
			if err := d.cni.CheckNetworkList(ctx, list, rt); err != nil {
				failed("CHECK", err)
			}
			fmt.Println("CHECK ok")
		case "del":
			if err := d.cni.DelNetworkList(ctx, list, rt); err != nil {
				failed("DEL", err)
			}
			fmt.Println("DEL ok")
		}
	case "status":
		list := loadList(file)
		if !atLeast(list.CNIVersion, "1.1.0") {
			fmt.Printf("STATUS skipped: cniVersion %s has no STATUS\n", list.CNIVersion)
			return
		}
		if err := d.perPlugin(ctx, list, "STATUS", nil); err != nil {
			failed("STATUS", err)
		}
		fmt.Println("STATUS ok")
	case "gc":
		list := loadList(file)
		var valid []attachment
		for _, a := range os.Args[3:] {
			id, ifname := a, "eth0"
			if i := strings.LastIndex(a, "/"); i >= 0 {
				id, ifname = a[:i], a[i+1:]
			}
			valid = append(valid, attachment{id, ifname})
		}
		d.gc(ctx, list, valid)
	case "bench":
		if len(os.Args) != 5 {
			fatalf("%s", usage)
		}
		pods, err1 := strconv.Atoi(os.Args[3])
		par, err2 := strconv.Atoi(os.Args[4])
		if err1 != nil || err2 != nil || pods < 1 || par < 1 {
			fatalf("PODS and PARALLEL must be positive integers")
		}
		if bench(ctx, d, loadList(file), pods, par) > 0 {
			os.Exit(1)
		}
	default:
		fatalf("unknown command %q\n%s", cmd, usage)
	}
}

// percentile is the nearest-rank percentile of sorted durations, in ms.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return ms(sorted[i])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// bench returns the number of errors: failed calls plus duplicate addresses.
func bench(ctx context.Context, d *driver, list *libcni.NetworkConfigList, pods, par int) int {
	ns := func(i int) string { return fmt.Sprintf("kldrv%d-%d", os.Getpid(), i) }
	defer func() {
		for i := 0; i < pods; i++ {
			_ = exec.Command("ip", "netns", "del", ns(i)).Run()
		}
	}()
	for i := 0; i < pods; i++ {
		if out, err := exec.Command("ip", "netns", "add", ns(i)).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "ip netns add %s: %v %s\n", ns(i), err, out)
			return 1
		}
	}
	var mu sync.Mutex
	errs := 0
	owner := map[string]string{}
	fail := func(format string, a ...interface{}) { // with mu held
		errs++
		if errs <= 5 {
			fmt.Fprintf(os.Stderr, format+"\n", a...)
		}
	}
	phase := func(name string) (time.Duration, []time.Duration) {
		var lat []time.Duration
		sem := make(chan struct{}, par)
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < pods; i++ {
			sem <- struct{}{}
			wg.Add(1)
			go func(id string) {
				defer wg.Done()
				defer func() { <-sem }()
				rt := runtimeConf(filepath.Join("/var/run/netns", id), id, "eth0")
				t := time.Now()
				var err error
				var addrs []string
				switch name {
				case "add":
					var res types.Result
					if res, err = d.cni.AddNetworkList(ctx, list, rt); err == nil {
						addrs, err = addresses(res)
					}
				case "check":
					err = d.cni.CheckNetworkList(ctx, list, rt)
				case "del":
					err = d.cni.DelNetworkList(ctx, list, rt)
				}
				took := time.Since(t)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					fail("%s %s: %v", name, id, err)
					return
				}
				lat = append(lat, took)
				for _, a := range addrs {
					if ip, _, perr := net.ParseCIDR(a); perr == nil && ip.IsLoopback() {
						continue // every namespace has its own loopback
					}
					if other, dup := owner[a]; dup {
						fail("DUPLICATE address %s: %s and %s", a, other, id)
					}
					owner[a] = id
				}
			}(ns(i))
		}
		wg.Wait()
		return time.Since(start), lat
	}
	out := map[string]interface{}{"pods": pods, "parallel": par, "cniVersion": list.CNIVersion}
	phases := []string{"add", "check", "del"}
	if !atLeast(list.CNIVersion, "0.4.0") {
		phases = []string{"add", "del"} // no CHECK before 0.4.0
	}
	for _, name := range phases {
		wall, lat := phase(name)
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		out[name+"_wall_ms"] = ms(wall)
		out[name+"_p50_ms"] = percentile(lat, .50)
		out[name+"_p90_ms"] = percentile(lat, .90)
		out[name+"_p99_ms"] = percentile(lat, .99)
		out[name+"_max_ms"] = percentile(lat, 1)
	}
	out["errors"] = errs
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	return errs
}

// addresses are the "ips" of a result, in whatever version libcni returned.
func addresses(res types.Result) ([]string, error) {
	b, err := json.Marshal(res)
	if err != nil {
		return nil, err
	}
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(r.IPs))
	for _, ip := range r.IPs {
		out = append(out, ip.Address)
	}
	return out, nil
}

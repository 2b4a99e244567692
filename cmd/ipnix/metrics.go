package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/fusefs"
)

// metrics gathers the counters of one mount.
type metrics struct {
	fetched *fetch.Stats
	mem     *cache.Memory
	disk    *cache.Disk       // nil without --cache-dir
	local   *fetch.Blockstore // nil unless a kubo blockstore is read directly
	fs      *fusefs.FS
}

// write prints the counters in the Prometheus text format.
func (m *metrics) write(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	line := func(name, help, typ string, v int64) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n%s %d\n", name, help, name, typ, name, v)
	}
	line("ipnix_fetch_blocks_total", "Verified blocks fetched from sources.", "counter", m.fetched.Blocks.Load())
	line("ipnix_fetch_bytes_total", "Bytes of verified blocks fetched from sources.", "counter", m.fetched.Bytes.Load())
	line("ipnix_fetch_failures_total", "Block fetches that failed.", "counter", m.fetched.Failures.Load())
	line("ipnix_fetch_hash_mismatches_total", "Blocks refused because their hash did not match their CID.", "counter", m.fetched.HashMismatches.Load())
	line("ipnix_memory_cache_hits_total", "Block requests answered from memory.", "counter", m.mem.Stats.Hits.Load())
	line("ipnix_memory_cache_misses_total", "Block requests that went below the memory cache.", "counter", m.mem.Stats.Misses.Load())
	line("ipnix_memory_cache_evictions_total", "Blocks evicted from memory.", "counter", m.mem.Stats.Evictions.Load())
	line("ipnix_memory_cache_evicted_unread_total", "Blocks brought by read-ahead or a batched fetch and evicted from memory before any read through the cache (a block whose small files were pushed into the page cache counts here too: it was used without a read).", "counter", m.mem.Stats.EvictedUnread.Load())
	line("ipnix_memory_cache_bytes", "Bytes of blocks held in memory.", "gauge", m.mem.Bytes())
	if d := m.disk; d != nil {
		line("ipnix_disk_cache_hits_total", "Block requests answered from disk.", "counter", d.Stats.Hits.Load())
		line("ipnix_disk_cache_misses_total", "Block requests that went below the disk cache.", "counter", d.Stats.Misses.Load())
		line("ipnix_disk_cache_evictions_total", "Blocks evicted from disk.", "counter", d.Stats.Evictions.Load())
		line("ipnix_disk_cache_corrupt_total", "Block files found torn or corrupted and fetched again.", "counter", d.Stats.Corrupt.Load())
		line("ipnix_disk_cache_unanswered_total", "Block file reads that did not answer within their bound (a disk that stopped answering); the block was asked of the sources instead.", "counter", d.Stats.Unanswered.Load())
		line("ipnix_disk_cache_bytes", "Bytes of blocks on disk.", "gauge", d.Bytes())
	}
	if l := m.local; l != nil {
		line("ipnix_kubo_blockstore_reads_total", "Blocks read straight from the local kubo's blockstore files (--kubo-repo), before being checked like any source's.", "counter", l.Read.Load())
		line("ipnix_kubo_blockstore_missing_total", "Blocks asked of the local kubo's blockstore that it did not hold (then asked of the other sources).", "counter", l.Missing.Load())
	}
	if ps := m.fs.PrefetchStats(); ps != nil {
		line("ipnix_readahead_blocks_total", "Blocks fetched ahead of sequential readers.", "counter", ps.Blocks.Load())
		line("ipnix_readahead_blocks_held_total", "Blocks a ranged or streamed fetch brought that were in the memory cache already (fetched twice).", "counter", ps.Again.Load())
		line("ipnix_readahead_dropped_total", "Read-ahead requests dropped because the queue was full.", "counter", ps.Dropped.Load())
	}
	line("ipnix_store_paths_shown_total", "Store-path lookups answered with a path.", "counter", m.fs.Stats.Lookups.Load())
	line("ipnix_store_paths_refused_total", "Store-path lookups refused.", "counter", m.fs.Stats.LookupsRefused.Load())
	line("ipnix_store_paths_verified_total", "Store paths whose whole NAR matched NarHash.", "counter", m.fs.Stats.Verified.Load())
	line("ipnix_local_copies_total", "Verified store paths whose larger files were copied into the cache directory for passthrough.", "counter", m.fs.Stats.LocalCopies.Load())
	line("ipnix_local_copies_checked_total", "Directories of local copies from an earlier run hashed again and found intact.", "counter", m.fs.Stats.LocalCopiesChecked.Load())
	line("ipnix_local_copy_bytes_hashed_total", "Bytes of local copies from an earlier run hashed again to check them (each copy once).", "counter", m.fs.Stats.LocalCopyBytesHashed.Load())
	line("ipnix_local_copies_dropped_total", "Directories of local copies dropped because they did not match their manifest.", "counter", m.fs.Stats.LocalCopiesDropped.Load())
	line("ipnix_store_paths_verified_whole_total", "Store paths without a trusted IpfsCidSig, fetched whole and checked before being shown.", "counter", m.fs.Stats.VerifiedWhole.Load())
	line("ipnix_listings_dropped_total", "Listings of idle store paths dropped to stay under --listing-memory.", "counter", m.fs.Stats.ListingsDropped.Load())
	line("ipnix_listing_bytes", "Estimated memory of the listings held.", "gauge", m.fs.ListingBytes())
	line("ipnix_exec_fetches_total", "Programs fetched whole (up to half the memory cache) at their first read because the kernel was starting them.", "counter", m.fs.Stats.ExecFetches.Load())
	line("ipnix_passthrough_opens_total", "Opens offered a local verified copy for FUSE passthrough.", "counter", m.fs.Stats.Passthrough.Load())
	line("ipnix_background_walks_total", "Store paths walked in NAR order whose rest was fetched in the background.", "counter", m.fs.Walks.Started.Load())
	line("ipnix_background_bytes_total", "Bytes of NAR the background fetch went through.", "counter", m.fs.Walks.Bytes.Load())
	line("ipnix_background_yields_total", "Times the background fetch waited for readers before a request.", "counter", m.fs.Walks.Yields.Load())
	line("ipnix_background_stopped_total", "Background fetches stopped before the end (quarantine, unmount, idle reader, failure).", "counter", m.fs.Walks.Stopped.Load())
	line("ipnix_reads_total", "READ requests answered by ipnix (reads the kernel answered from its cache or a passthrough file never arrive).", "counter", m.fs.Stats.Reads.Load())
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %.6f\n", "ipnix_read_seconds_total", "Time READ requests spent getting their bytes: fetching, waiting for blocks on their way, copying.",
		"ipnix_read_seconds_total", "ipnix_read_seconds_total", float64(m.fs.Stats.ReadNanos.Load())/1e9)
	line("ipnix_page_pushes_total", "Small files written into the kernel's page cache once their blocks were verified.", "counter", m.fs.Stats.PagePushes.Load())
	line("ipnix_page_push_bytes_total", "Bytes of the files written into the kernel's page cache.", "counter", m.fs.Stats.PagePushBytes.Load())
	line("ipnix_page_push_dropped_total", "Page pushes dropped because the queue was full.", "counter", m.fs.Stats.PagePushDrops.Load())
	line("ipnix_page_push_errors_total", "Page pushes the kernel refused (other than for inodes it no longer knows).", "counter", m.fs.Stats.PagePushErrors.Load())
	line("ipnix_passthrough_fallback_reads_total", "Reads that reached ipnix on handles offered for passthrough.", "counter", m.fs.Stats.PassthroughFellBack.Load())
	line("ipnix_store_paths_quarantined_total", "Store paths whose NAR did not match NarHash.", "counter", m.fs.Stats.Quarantined.Load())
}

// serveMetrics serves /metrics on ln until the returned stop is called.
func serveMetrics(ln net.Listener, m *metrics, log *slog.Logger) (stop func()) {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) { m.write(w) })
	// Profiles for diagnosing a slow mount; the listener is the operator's
	// choice of (normally loopback) address.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}
}

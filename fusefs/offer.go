package fusefs

import "time"

// Leaves that read-ahead and background fetch bring are hashed into the
// NAR's digest and pushed into the kernel's page cache too (onLeaf), but
// not on the goroutine that fetched them: hashing there would halve the
// speed of the stream that readers wait for. Each store path hands them,
// in arrival order, to one goroutine of its own, started when leaves come
// and gone when none have come for offerIdle. When the queue is full a
// leaf is dropped: a READ brings it again, or the final check reads it.

const (
	offerQueue = 64 // leaves (16 MiB of 256 KiB leaves)
	offerIdle  = 100 * time.Millisecond
)

type offered struct {
	start int64
	data  []byte
}

// offerLeaf is the NAR's offer hook.
func (sp *storePath) offerLeaf(start int64, data []byte) {
	if sp.fs.bgCtx.Err() != nil {
		return // closing
	}
	select {
	case sp.offers <- offered{start, data}:
	default:
		sp.fs.Stats.OffersDropped.Add(1)
		return
	}
	if sp.offering.CompareAndSwap(false, true) {
		sp.fs.bg.Add(1)
		go sp.drainOffers()
	}
}

// drainOffers hands queued leaves to onLeaf until none come for a while.
func (sp *storePath) drainOffers() {
	defer sp.fs.bg.Done()
	idle := time.NewTimer(offerIdle)
	defer idle.Stop()
	for {
		select {
		case o := <-sp.offers:
			sp.onLeaf(o.start, o.data)
			idle.Reset(offerIdle)
		case <-idle.C:
			sp.offering.Store(false)
			// A leaf queued after the timer fired but before the flag
			// was cleared would wait for the next one: take it now.
			if len(sp.offers) == 0 || !sp.offering.CompareAndSwap(false, true) {
				return
			}
			idle.Reset(offerIdle)
		case <-sp.fs.bgCtx.Done():
			sp.offering.Store(false)
			return
		}
	}
}

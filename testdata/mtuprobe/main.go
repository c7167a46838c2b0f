// mtuprobe prints the MTU of the interface named by its argument, looked up
// by index as the server's blksizeCap does (net.InterfaceByIndex, netlink),
// or the error. router_test.go runs it under qemu-user to learn whether the
// emulator passes netlink through intact before judging the server's blksize.
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	byName, err := net.InterfaceByName(os.Args[1])
	if err == nil {
		var byIndex *net.Interface
		if byIndex, err = net.InterfaceByIndex(byName.Index); err == nil {
			fmt.Printf("mtu %d\n", byIndex.MTU)
			return
		}
	}
	fmt.Printf("error %v\n", err)
	os.Exit(1)
}

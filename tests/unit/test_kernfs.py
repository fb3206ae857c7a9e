"""KernfsReader on a hand-made memory image: a directory's links found in the
kernel's name order, a child straddling two pages, a cycle and an unreadable
child reported as ReadError."""

import pytest

from drgn_hotplug.reader.kernfs import KernfsLayout, KernfsReader
from drgn_hotplug.reader.target import ReadError

# struct kernfs_node as in the layout doctests: 128 bytes, rb at 24 (rb_right
# at +8, rb_left at +16), symlink.target_kn at 64, dir.children at 72, flags
# at 112; KERNFS_FILE 2, KERNFS_LINK 4.
LAYOUT = KernfsLayout(sizeof_node=128, active=4, parent=8, name=16, rb=24, children=72,
                      target_kn=64, flags=112, type_link=4, type_mask=0xF, removing_flag=0x4000)
FILE, LINK = 2, 4
PAGE = 4096
BASE = 0xffff888000100000          # two readable pages
DIRECTORY = BASE + 0x100
HOLE = 0xffff888000900000         # never readable


class Memory:
    """A target whose readable bytes are one image at BASE."""

    def __init__(self, image: bytearray):
        self.image = image

    def read(self, address, size):
        if BASE <= address and address + size <= BASE + len(self.image):
            return bytes(self.image[address - BASE:address - BASE + size])
        raise ReadError(address, size, "not in the image")


def put(image, address, offset, value, size=8):
    at = address - BASE + offset
    image[at:at + size] = value.to_bytes(size, "little", signed=value < 0)


def node(image, address, flags, left=0, right=0, target=0):
    put(image, address, LAYOUT.flags, flags, 2)
    put(image, address, LAYOUT.parent, DIRECTORY)
    put(image, address, LAYOUT.rb + 8, right and right + LAYOUT.rb)
    put(image, address, LAYOUT.rb + 16, left and left + LAYOUT.rb)
    put(image, address, LAYOUT.target_kn, target)


# In name order: state (file), node1 (link), online (file), node0 (link), uevent (file).
STATE, NODE1, ONLINE, NODE0, UEVENT = (BASE + 0x400, BASE + 0xfc0, BASE + 0x600,
                                       BASE + 0x800, BASE + 0xa00)


def directory_image():
    """online at the root; node1 is the right child of state and straddles
    the two pages (0xfc0 + 128 > 0x1000)."""
    image = bytearray(2 * PAGE)
    put(image, DIRECTORY, LAYOUT.children, ONLINE + LAYOUT.rb)
    node(image, ONLINE, FILE, left=STATE, right=NODE0)
    node(image, STATE, FILE, right=NODE1)
    node(image, NODE1, LINK, target=0x1111)
    node(image, NODE0, LINK, right=UEVENT, target=0x2222)
    node(image, UEVENT, FILE)
    return image


def reader(image):
    return KernfsReader(Memory(image), LAYOUT, PAGE, max_children=64)


def test_links_come_in_name_order_with_their_targets():
    links = reader(directory_image()).links(DIRECTORY)
    assert [(kn.address, kn.target_kn) for kn in links] == [(NODE1, 0x1111), (NODE0, 0x2222)]


def test_children_and_membership_cover_every_child():
    kernfs = reader(directory_image())
    assert [kn.address for kn in kernfs.children(DIRECTORY)] == [STATE, NODE1, ONLINE, NODE0, UEVENT]
    assert kernfs.in_parent(kernfs.node(UEVENT))
    image = directory_image()
    node(image, BASE + 0xc00, FILE)          # claims DIRECTORY as parent, not in its tree
    kernfs = reader(image)
    assert not kernfs.in_parent(kernfs.node(BASE + 0xc00))


def test_a_child_pointing_back_at_an_ancestor_is_a_cycle():
    image = directory_image()
    node(image, UEVENT, FILE, left=ONLINE)
    with pytest.raises(ReadError, match="reaches .* twice"):
        reader(image).links(DIRECTORY)


def test_an_unreadable_child_is_named_by_its_rb_node():
    image = directory_image()
    node(image, NODE0, LINK, right=HOLE, target=0x2222)
    with pytest.raises(ReadError) as error:
        reader(image).links(DIRECTORY)
    # The word-by-word walk fails on the child's own sibling links.
    assert HOLE + LAYOUT.rb < error.value.address < HOLE + LAYOUT.rb + 24

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title edged settlement: node checkpoints, epoch payout roots, and claims.
/// @notice The fleet operator (the deploying account) anchors the signed checkpoints of the
/// nodes it collected from and posts, for each epoch, the root of the payout Merkle tree of
/// (epoch, payee, amount) together with the epoch's total in native currency. Any account
/// may then submit a payee's claim with its inclusion proof; the amount goes to the payee,
/// exactly once.
/// @dev Merkle trees are RFC 6962 / RFC 9162 trees over SHA-256 (leaf prefix 0x00, node
/// prefix 0x01), the same hashing as the nodes' receipt logs. A payout leaf is
/// SHA-256(0x00 || abi.encode(uint64 epoch, address payee, uint256 amount)).
contract EdgedSettlement {
    struct Epoch {
        bytes32 root;
        uint64 leafCount;
        uint256 total;
        uint256 claimed;
    }

    address public immutable operator;

    /// node (Ed25519 public key) => checkpoint size => RFC 6962 root
    mapping(bytes32 => mapping(uint64 => bytes32)) public checkpointRoot;
    /// nodes caught with two roots for one size; no later checkpoint of theirs is accepted
    mapping(bytes32 => bool) public frozen;
    mapping(uint64 => Epoch) public epochs;
    mapping(uint64 => mapping(address => bool)) public claimed;

    event CheckpointRecorded(bytes32 indexed node, uint64 size, bytes32 root);
    event Equivocation(bytes32 indexed node, uint64 size, bytes32 recordedRoot, bytes32 conflictingRoot);
    event EpochPosted(uint64 indexed epoch, bytes32 root, uint64 leafCount, uint256 total);
    event Claimed(uint64 indexed epoch, address indexed payee, uint256 amount);

    error NotOperator();
    error NodeFrozen(bytes32 node);
    error EmptyCheckpoint();
    error EpochExists(uint64 epoch);
    error EmptyEpoch();
    error UnknownEpoch(uint64 epoch);
    error AlreadyClaimed(uint64 epoch, address payee);
    error InvalidProof();
    error ExceedsEpochTotal(uint64 epoch);
    error TransferFailed();

    constructor() {
        operator = msg.sender;
    }

    modifier onlyOperator() {
        if (msg.sender != operator) revert NotOperator();
        _;
    }

    /// @notice Record checkpoint (node, size, root). Idempotent: the same root again changes
    /// nothing. A different root for a size already recorded is an equivocation: the
    /// conflicting root is not recorded, the event is emitted and the node is frozen (a
    /// revert would discard the event, so this call succeeds and returns false); every later
    /// call for a frozen node reverts with NodeFrozen. A zero size or a zero root reverts with
    /// EmptyCheckpoint (a zero root would otherwise look recorded without being stored).
    function recordCheckpoint(bytes32 node, uint64 size, bytes32 root)
        external
        onlyOperator
        returns (bool recorded)
    {
        if (frozen[node]) revert NodeFrozen(node);
        if (size == 0 || root == bytes32(0)) revert EmptyCheckpoint();
        bytes32 known = checkpointRoot[node][size];
        if (known == root) return true;
        if (known != bytes32(0)) {
            frozen[node] = true;
            emit Equivocation(node, size, known, root);
            return false;
        }
        checkpointRoot[node][size] = root;
        emit CheckpointRecorded(node, size, root);
        return true;
    }

    /// @notice Post the payout root of an epoch; the value sent is the epoch's total.
    function postEpoch(uint64 epoch, bytes32 root, uint64 leafCount) external payable onlyOperator {
        if (epochs[epoch].leafCount != 0) revert EpochExists(epoch);
        if (leafCount == 0) revert EmptyEpoch();
        epochs[epoch] = Epoch(root, leafCount, msg.value, 0);
        emit EpochPosted(epoch, root, leafCount, msg.value);
    }

    /// @notice Pay `amount` to `payee` for `epoch`, once, if (epoch, payee, amount) is leaf
    /// `index` of the epoch's payout tree.
    function claim(uint64 epoch, address payable payee, uint256 amount, uint64 index, bytes32[] calldata proof)
        external
    {
        Epoch storage e = epochs[epoch];
        if (e.leafCount == 0) revert UnknownEpoch(epoch);
        if (claimed[epoch][payee]) revert AlreadyClaimed(epoch, payee);
        bytes32 leaf = sha256(abi.encodePacked(bytes1(0x00), abi.encode(epoch, payee, amount)));
        if (!verifyInclusion(leaf, index, e.leafCount, proof, e.root)) revert InvalidProof();
        if (e.claimed + amount > e.total) revert ExceedsEpochTotal(epoch);
        claimed[epoch][payee] = true;
        e.claimed += amount;
        emit Claimed(epoch, payee, amount);
        (bool ok,) = payee.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    /// @notice RFC 9162 section 2.1.3.2: verify an inclusion proof of `leaf` at `index` in a
    /// tree of `size` leaves with root `root`.
    function verifyInclusion(bytes32 leaf, uint64 index, uint64 size, bytes32[] calldata proof, bytes32 root)
        public
        pure
        returns (bool)
    {
        if (index >= size) return false;
        uint64 fn = index;
        uint64 sn = size - 1;
        bytes32 r = leaf;
        for (uint256 i = 0; i < proof.length; i++) {
            if (sn == 0) return false;
            if (fn & 1 == 1 || fn == sn) {
                r = sha256(abi.encodePacked(bytes1(0x01), proof[i], r));
                if (fn & 1 == 0) {
                    while (fn & 1 == 0 && fn != 0) {
                        fn >>= 1;
                        sn >>= 1;
                    }
                }
            } else {
                r = sha256(abi.encodePacked(bytes1(0x01), r, proof[i]));
            }
            fn >>= 1;
            sn >>= 1;
        }
        return sn == 0 && r == root;
    }
}
